"""PSPNet through the tools, on a tiny generated shapes set: the shapes PSPNet configs train, a
distilled student is evaluated by tools/eval_dense.py to the mIoU its run logged, resumes to a second
epoch, exports (TorchScript, torch.export, ONNX) to its own logits; quickstart_dense trains the pair and
its table reads back as its JSON; the bad inputs of a PSPNet run are one-line errors. Marked `e2e`.
(DDP with the mIoU gathered: tests/test_ddp_matrix.py, case dense_pspnet_CANKD.)"""

import json
import os
import re

import pytest
import torch

from conftest import REPO_ROOT
from helpers import assert_ok, assert_user_error
from test_dense_tools_e2e import records, run_dir_of, trained_teacher

pytestmark = pytest.mark.e2e

TOOLS = os.path.join(REPO_ROOT, "tools")
TRAIN, EVAL, EXPORT = (os.path.join(TOOLS, f"{name}.py") for name in ("train_dense", "eval_dense", "export"))
QUICKSTART = os.path.join(TOOLS, "quickstart_dense.py")
SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")
SIZE = ["DATASET.SHAPES.IMAGE_SIZE", "64", "DATASET.SHAPES.MIN_OBJECT_SIZE", "12", "DATASET.SHAPES.MAX_OBJECT_SIZE",
        "28", "DATASET.CROP_SIZE", "48", "SOLVER.BATCH_SIZE", "4", "DATASET.NUM_WORKERS", "0", "SOLVER.AMP", "False",
        "FREEKD.PROMPT_EPOCHS", "1"]


def tiny(tmp, name, *extra):
    """Seconds-long runs: 8 + 4 images of 64 px (48 px crops), an R18 teacher, one epoch."""
    return ["EXPERIMENT.NAME", name, "DATASET.ROOT", str(tmp / "data"), "LOG.PREFIX", str(tmp / "out"),
            "DATASET.NUM_TRAIN", "8", "DATASET.NUM_VAL", "4", "SOLVER.EPOCHS", "1", *SIZE,
            "DISTILLER.TEACHER", "pspnet_resnet18", *extra]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pspnet_e2e")
    return tmp, trained_teacher("pspnet_teacher.yaml", tiny(tmp, "teacher", "DISTILLER.STUDENT", "pspnet_resnet18"))


def test_distilled_pspnet_evaluates_resumes_and_exports(tool, tool_in_process, teacher):
    tmp, weights = teacher
    first = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, "pspnet_cankd.yaml"),
                            *tiny(tmp, "cankd", "DISTILLER.TEACHER_WEIGHTS", weights))
    assert_ok(first)
    run_dir = run_dir_of(first)
    (record,) = records(run_dir)
    assert record["loss_kd"] > 0 and record["loss_aux"] > 0 and record["test_acc"] == record["test_miou"]

    evaluated = tool(EVAL, "-c", os.path.join(run_dir, "student_best"))
    assert_ok(evaluated)
    printed = dict(re.findall(r"(\w+): ([\d.]+)", evaluated.stdout))
    assert float(printed["miou"]) == pytest.approx(record["test_miou"], abs=0.01)   # the same model on the same maps
    assert float(printed["pixel_acc"]) == pytest.approx(record["test_pixel_acc"], abs=0.01)

    resumed = tool_in_process(TRAIN, "SOLVER.EPOCHS", "2", "--resume", run_dir)
    assert_ok(resumed)
    assert "Resumed from" in resumed.stdout and [r["epoch"] for r in records(run_dir)] == [1, 2]
    latest = torch.load(os.path.join(run_dir, "latest"), weights_only=True)
    assert latest["epoch"] == 2 and "blocks.0.W.0.weight" in latest["model"]   # CanKD's block kept

    out = tmp / "export"
    exported = tool(EXPORT, "-c", os.path.join(run_dir, "student_best"), "-o", str(out), "-bs", "3")
    assert_ok(exported)
    check = json.loads((out / "student_best.export.json").read_text())
    assert sorted(check) == ["onnx", "pt2", "torchscript"]
    for fmt, result in check.items():
        assert result["ok"] and result["max_abs_diff"] < 1e-4 and os.path.isfile(result["path"]), fmt
    program = torch.jit.load(check["torchscript"]["path"])
    assert program(torch.zeros(2, 3, 48, 48)).shape == (2, 4, 48, 48)   # logits of background + 3 shapes


def test_quickstart_trains_the_pspnet_pair_and_its_table_reads_back(tool_in_process, tmp_path):
    out = tmp_path / "quick"
    result = tool_in_process(QUICKSTART, "--pairs", "pspnet", "--methods", "CANKD", "--epochs", "1", "--teacher-epochs",
                             "1", "--num-train", "8", "--num-val", "4", "--output", str(out), "--data",
                             str(tmp_path / "data"), *SIZE)
    assert_ok(result)
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["pspnet"] and list(results["pspnet"]["students"]) == ["NONE", "CANKD"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in (out / "results.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    for method, row in results["pspnet"]["students"].items():
        logged = records(str(out / "runs" / f"pspnet_{method.lower()}"))
        assert row["best"] == max(r["test_miou"] for r in logged) and row["metric"] == "mIoU"
        assert float(rows[method][2]) == pytest.approx(row["best"], abs=0.005) and rows[method][1] == "pspnet_resnet18"
    assert results["pspnet"]["students"]["CANKD"]["method_params"] > 0 == results["pspnet"]["students"]["NONE"]["method_params"]
    assert "pspnet pair. Teacher pspnet_resnet34: mIoU" in (out / "results.md").read_text()


def test_pspnet_bad_inputs_are_one_line_errors(tool_in_process, teacher):
    tmp, weights = teacher
    student = os.path.join(SHAPES, "pspnet_student.yaml")
    cases = [
        (TRAIN, ["--cfg", student, *tiny(tmp, "a", "DISTILLER.STUDENT", "pspnet_resnet152")],
         ["Unknown dense model 'pspnet_resnet152'", "pspnet_resnet101"]),
        (TRAIN, ["--cfg", os.path.join(SHAPES, "pspnet_cankd.yaml"),
                 *tiny(tmp, "b", "DISTILLER.TEACHER", "fcos_resnet18_fpn", "DISTILLER.TEACHER_WEIGHTS", weights)],
         ["does not fit FCOS", "another architecture"]),   # a segmenter's file as a detector teacher
        (TRAIN, ["--cfg", os.path.join(SHAPES, "pspnet_freekd.yaml"),
                 *tiny(tmp, "c", "DISTILLER.TEACHER_WEIGHTS", weights, "FREEKD.NUM_STAGES", "2")],
         ["FREEKD.NUM_STAGES"]),
        (TRAIN, ["--cfg", os.path.join(SHAPES, "pspnet_cankd.yaml"),
                 *tiny(tmp, "d", "DISTILLER.TEACHER_WEIGHTS", weights, "CANKD.POOL_SIZE", "8")],
         ["CANKD.POOL_SIZE 8"]),
        (TRAIN, ["--cfg", student, *tiny(tmp, "e", "DATASET.TYPE", "coco", "DATASET.ROOT", str(tmp / "none"))],
         ["segmentation or shapes"]),
        (EVAL, ["-c", weights, "--cfg", student, "-m", "pspnet_resnet34", *SIZE, "DATASET.ROOT", str(tmp / "data"),
                "DATASET.NUM_TRAIN", "8", "DATASET.NUM_VAL", "4"], ["pspnet_resnet34", "layer"]),
        (EXPORT, ["-c", weights, "--formats", "deploy"], ["choose from torchscript, pt2, onnx"]),
    ]
    for script, args, fragments in cases:
        assert_user_error(tool_in_process(script, *args), *fragments)
