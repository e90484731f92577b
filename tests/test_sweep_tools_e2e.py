"""tools/sweep.py and tools/report.py as a user runs them: a tiny two-seed sweep on the digits,
resumed after an interruption, then reported. The first sweep and the report run as subprocesses;
the resumed sweep calls the same script in this process (`tool_in_process`): its trials are
subprocesses either way."""

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT
from mdistiller.experiments.tables import read_csv

pytestmark = pytest.mark.e2e

SWEEP = os.path.join(REPO_ROOT, "tools", "sweep.py")
REPORT = os.path.join(REPO_ROOT, "tools", "report.py")


def write_sweep(tmp_path, name, parameters):
    spec = {"program": "tools/train.py", "method": "grid", "metric": {"name": "best_acc", "goal": "maximize"},
            "parameters": {"LOG.PREFIX": {"value": str(tmp_path / "out")}, "EXPERIMENT.PROJECT": {"value": "sw"},
                           "DATASET.IMAGE_SIZE": {"value": 8}, "SOLVER.BATCH_SIZE": {"value": 256},
                           "SOLVER.EPOCHS": {"value": 2}, "LOG.SAVE_CHECKPOINT_FREQ": {"value": 1}, **parameters},
            "command": ["${env}", "${interpreter}", "${program}", "--cfg", "configs/digits/student.yaml",
                        "${args_no_hyphens}"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def accuracies(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["test_acc"] for line in f]


def test_sweep_runs_resumes_and_reports(tool, tool_in_process, tmp_path):
    sweep = write_sweep(tmp_path, "seeds", {"EXPERIMENT.SEED": {"values": [0, 1]}})
    first = tool(SWEEP, sweep, "--workers", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    sweep_dir = tmp_path / "out" / "sw" / "sweeps" / "seeds"
    records = [json.loads(line) for line in (sweep_dir / "records.jsonl").read_text().splitlines()]
    assert sorted(r["params"]["EXPERIMENT.SEED"] for r in records) == [0, 1]
    assert all(r["status"] == "finished" for r in records)
    runs = {r["params"]["EXPERIMENT.SEED"]: r["run_dir"] for r in records}
    assert runs[0] != runs[1] and runs[1].endswith("EXPERIMENT.SEED:1")
    for record in records:
        accs = accuracies(record["run_dir"])
        assert len(accs) == 2 and record["best_acc"] == max(accs) and record["last_acc"] == accs[-1]
    table = read_csv(str(sweep_dir / "results.csv"))
    expected = sorted((r["best_acc"] for r in records), reverse=True)
    assert [float(row["best_acc"]) for row in table] == pytest.approx(expected, abs=1e-4)

    # Seed 1 stopped after its first epoch: its `latest` is epoch 1 and its log has one record.
    shutil.copyfile(os.path.join(runs[1], "epoch_1"), os.path.join(runs[1], "latest"))
    metrics = os.path.join(runs[1], "metrics.jsonl")
    with open(metrics) as f:
        first_line = f.readline()
    with open(metrics, "w") as f:
        f.write(first_line)
    second = tool_in_process(SWEEP, sweep)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[skip] " + os.path.basename(runs[0]) in second.stdout
    assert f"[1/1] finished {os.path.basename(runs[1])}" in second.stdout
    log = (sweep_dir / "logs" / "trial_1.log").read_text()
    assert "--resume" in log and "Resumed from" in log and "at epoch 2" in log
    assert len(accuracies(runs[1])) == 2
    assert len((sweep_dir / "records.jsonl").read_text().splitlines()) == 3

    report = tool(REPORT, str(tmp_path / "out" / "sw"))
    assert report.returncode == 0, report.stderr
    best = np.array([max(accuracies(runs[s])) for s in (0, 1)])
    last = np.array([accuracies(runs[s])[-1] for s in (0, 1)])
    row = (f"| digits | NONE | resnet8 (alone) | - | 2 | 0,1 | {best.mean():.2f} ± {best.std(ddof=1):.2f} "
           f"| {last.mean():.2f} ± {last.std(ddof=1):.2f} | - |")
    assert row in report.stdout
    plots = tmp_path / "out" / "sw" / "report" / "plots"
    assert sorted(os.listdir(plots)) == ["digits_resnet8_bars.png", "digits_resnet8_curves.png"]
