"""tools/quickstart.py's own logic: it deletes only what it wrote under --out, and its verdict
"beats the student alone by more than the spread"; the heterogeneous demo (--hetero) in a short form.
The default demo runs whole in test_tools_e2e.py."""

import json
import os
import statistics
import sys

import pytest
import yaml

from conftest import REPO_ROOT
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError, OutputDirError
from mdistiller.experiments.runs import Summary

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import quickstart  # noqa: E402


def test_a_second_call_deletes_exactly_what_the_first_wrote(tmp_path):
    out = tmp_path / "output"
    (out / "my_run").mkdir(parents=True)
    (out / "my_run" / "latest").write_text("a user's own run")
    (out / "notes.txt").write_text("keep me")
    first = ["teacher", "KD_seed0", "results.md"]
    quickstart.remove_previous_outputs(str(out), first)
    assert json.loads((out / quickstart.MANIFEST).read_text()) == first
    (out / "teacher").mkdir()
    (out / "teacher" / "latest").write_text("old")
    (out / "KD_seed0").mkdir()
    (out / "results.md").write_text("old table")

    second = ["teacher", "DKD_seed0", "results.md"]
    quickstart.remove_previous_outputs(str(out), second)
    assert sorted(os.listdir(out)) == sorted(["my_run", "notes.txt", quickstart.MANIFEST])
    assert (out / "my_run" / "latest").read_text() == "a user's own run" and (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / quickstart.MANIFEST).read_text()) == second


def test_a_name_it_did_not_write_is_never_overwritten(tmp_path):
    out = tmp_path / "output"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "latest").write_text("someone else's teacher")
    with pytest.raises(OutputDirError, match="teacher exists and was not written by the quick start"):
        quickstart.remove_previous_outputs(str(out), ["teacher", "results.md"])
    assert (out / "teacher" / "latest").read_text() == "someone else's teacher"
    assert not (out / quickstart.MANIFEST).exists()


def test_a_manifest_naming_a_path_outside_out_is_refused(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    (tmp_path / "precious").write_text("x")
    (out / quickstart.MANIFEST).write_text(json.dumps(["../precious"]))
    with pytest.raises(OutputDirError, match="not a name in"):
        quickstart.remove_previous_outputs(str(out), ["teacher"])
    assert (tmp_path / "precious").read_text() == "x"


@pytest.mark.parametrize("method, alone, expected", [
    ([96.0, 97.0, 98.0], [90.0, 91.0, 92.0], True),    # +6 against a spread of 1 + 1
    ([91.0, 95.0, 99.0], [90.0, 91.0, 92.0], False),   # +4 against 4 + 1: within the spread
    ([95.0], [90.0], False),                           # one seed: no spread, no verdict
])
def test_beats_alone_compares_the_gain_with_both_spreads(method, alone, expected):
    gain = statistics.mean(method) - statistics.mean(alone)
    if len(method) > 1:
        assert (gain > statistics.stdev(method) + statistics.stdev(alone)) == expected
    assert quickstart.beats_alone(Summary(method), Summary(alone)) == expected


def best_top1(run_dir) -> float:
    """The best test top-1 of a run, read from its metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return max(json.loads(line)["test_acc"] for line in f if line.strip())


def markdown_rows(text: str) -> dict:
    """{first cell: cells} of the markdown table rows in `text`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows[1:]}


@pytest.mark.slow
def test_hetero_demo_writes_a_table_per_direction_and_its_plots(tmp_path, torch_single_thread):
    import matplotlib.image

    # The short form: one seed, one epoch, the teachers and students on a tenth of the split, 8 px
    # images (a 2x2 token grid); make demo-hetero runs the configs at their 16 px.
    out = tmp_path / "hetero"
    quickstart.main(["--hetero", "--out", str(out), "--seeds", "0", "--epochs", "1", "--fraction", "0.1",
                     "DATASET.TRAIN_FRACTION", "0.1", "DATASET.IMAGE_SIZE", "8"])
    with open(quickstart.HETERO_PLAN) as f:
        plan = yaml.safe_load(f)
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0] and list(results["directions"]) == [d["name"] for d in plan["directions"]]
    markdown = (out / "results.md").read_text()
    sections = markdown.split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [d["title"] for d in plan["directions"]]
    written = {"teacher", "vit_teacher", "results.json", "results.md", quickstart.MANIFEST}
    for direction, section in zip(plan["directions"], sections):
        name, summary = direction["name"], results["directions"][direction["name"]]
        teacher_cfg = build_cfg(os.path.join(os.path.dirname(quickstart.HETERO_PLAN), direction["teacher"]))
        teacher_dir = out / os.path.splitext(os.path.basename(direction["teacher"]))[0]
        assert summary["teacher"] == {"model": teacher_cfg.DISTILLER.STUDENT, "top1": best_top1(teacher_dir)}
        assert f"top-1 {best_top1(teacher_dir):.2f}." in section.splitlines()[2]
        assert list(summary["students"]) == direction["methods"]
        rows = markdown_rows(section)
        assert list(rows) == direction["methods"]
        for method, row in summary["students"].items():
            run_dir = out / f"{name}_{method}_seed0"
            assert row["top1_runs"] == [best_top1(run_dir)] and row["top1"] == best_top1(run_dir)
            assert rows[method][1] == row["model"] != summary["teacher"]["model"]
            assert rows[method][2] == f"{row['top1']:.2f}"
            assert (row["extra_params"] == 0) == (method in ("NONE", "KD", "DKD", "DIST", "DEIT"))
            written.add(run_dir.name)
        for plot in (f"accuracy_{name}.png", f"accuracy_bars_{name}.png"):
            assert (out / plot).read_bytes().startswith(b"\x89PNG")
            height, width = matplotlib.image.imread(str(out / plot)).shape[:2]
            assert width > 400 and height > 300
            written.add(plot)
    assert set(os.listdir(out)) == written
    assert set(json.loads((out / quickstart.MANIFEST).read_text())) == written - {quickstart.MANIFEST}


def test_hetero_methods_narrow_each_direction_and_an_unplanned_one_is_refused(tmp_path):
    plan = tmp_path / "demo.yaml"
    plan.write_text(yaml.safe_dump({"seeds": [3, 4], "directions": [
        {"name": "cnn_vit", "title": "a", "teacher": "../teacher.yaml", "methods": ["NONE", "KD", "DEIT"]},
        {"name": "vit_cnn", "title": "b", "teacher": "vit_teacher.yaml", "methods": ["NONE", "KD"]}]}))
    seeds, directions = quickstart.load_hetero_plan(str(plan), None)
    assert seeds == [3, 4] and [d.methods for d in directions] == [["NONE", "KD", "DEIT"], ["NONE", "KD"]]
    assert directions[0].teacher_config == str(tmp_path.parent / "teacher.yaml")
    assert directions[1].config_dir == str(tmp_path / "vit_cnn")
    assert directions[1].run_name("KD", 4) == "vit_cnn_KD_seed4"
    assert directions[1].plot_files() == ["accuracy_vit_cnn.png", "accuracy_bars_vit_cnn.png"]
    _, directions = quickstart.load_hetero_plan(str(plan), "DEIT,NONE")
    assert [(d.name, d.methods) for d in directions] == [("cnn_vit", ["NONE", "DEIT"]), ("vit_cnn", ["NONE"])]
    _, directions = quickstart.load_hetero_plan(str(plan), "DEIT")
    assert [(d.name, d.methods) for d in directions] == [("cnn_vit", ["DEIT"])]
    with pytest.raises(ConfigError, match="--methods OFD is in no direction"):
        quickstart.load_hetero_plan(str(plan), "KD,OFD")
    with pytest.raises(ConfigError, match="--all is for the default demo"):
        quickstart.main(["--hetero", "--all", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
