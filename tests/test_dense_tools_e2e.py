"""The dense tools as a user runs them, on a tiny generated shapes set: teacher, every shapes config,
eval_dense, FreeKD stage 1 then 2, resume and checkpoints, one-line errors. Marked `e2e`.

Each tool runs once as a subprocess (the teacher's train_dense, eval_dense, train_dense_prompt); the
other runs call the same script in this process (`tool_in_process`), which saves the imports' start-up."""

import json
import os
import re
import shutil

import pytest
import torch

from conftest import REPO_ROOT
from helpers import assert_ok, assert_user_error

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train_dense.py")
EVAL = os.path.join(REPO_ROOT, "tools", "eval_dense.py")
PROMPT = os.path.join(REPO_ROOT, "tools", "train_dense_prompt.py")
SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")
METHODS = ["student", "cwd", "pkd", "mgd", "fgd", "cankd"]


def tiny(tmp, name, *extra):
    """Overrides for seconds-long runs: 8 + 4 images of 64 px, an R18 teacher, one epoch."""
    return ["EXPERIMENT.NAME", name, "DATASET.ROOT", str(tmp / "data"), "LOG.PREFIX", str(tmp / "out"), "DATASET.NUM_TRAIN", "8",
            "DATASET.NUM_VAL", "4", "DATASET.SHAPES.IMAGE_SIZE", "64", "DATASET.SHAPES.MIN_OBJECT_SIZE", "12",
            "DATASET.SHAPES.MAX_OBJECT_SIZE", "28", "MODEL.MIN_SIZE", "64", "MODEL.MAX_SIZE", "64",
            "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "1", "DATASET.NUM_WORKERS", "0", "CANKD.LEVELS", "3",
            "SOLVER.AMP", "False",  # bf16 on CPU gives NaN gradients in P7 on 1x1 maps of 64 px images
            "DISTILLER.TEACHER", "fcos_resnet18_fpn", *extra]


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_dir_of(result) -> str:
    return re.search(r"Run directory: (.*)", result.stdout).group(1).strip()


def trained_teacher(config: str, opts) -> str:
    """The student_best of configs/shapes/<config> trained by tools/train_dense.py as a subprocess."""
    from conftest import run_tool

    result = run_tool(TRAIN, "--cfg", os.path.join(SHAPES, config), *opts)
    assert_ok(result)
    return os.path.join(run_dir_of(result), "student_best")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense_e2e")
    yield tmp, trained_teacher("teacher.yaml", tiny(tmp, "teacher", "DISTILLER.STUDENT", "fcos_resnet18_fpn"))
    shutil.rmtree(tmp / "out", ignore_errors=True)


def test_every_shapes_config_trains_and_evaluates(tool, tool_in_process, teacher):
    tmp, weights = teacher
    for method in METHODS:
        result = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, f"{method}.yaml"),
                      *tiny(tmp, method, "DISTILLER.TEACHER_WEIGHTS", weights))
        assert_ok(result)
        (record,) = records(run_dir_of(result))
        assert 0.0 <= record["test_acc"] <= 100.0 and record["test_acc"] == record["test_ap"]
        if method != "student":
            assert record["loss_kd"] > 0 and "train_seconds" in record
        if method != METHODS[-1]:   # each run's checkpoints hold ~0.5 GB (teacher and momentum included)
            shutil.rmtree(run_dir_of(result))
    evaluated = tool(EVAL, "-c", os.path.join(run_dir_of(result), "student_best"))
    assert_ok(evaluated)
    ap = float(re.search(r"ap: ([\d.]+)", evaluated.stdout).group(1))
    assert ap == pytest.approx(record["test_acc"], abs=0.01)   # the same model on the same images


def test_freekd_stage1_then_stage2(tool, tool_in_process, teacher):
    tmp, weights = teacher
    cfg = os.path.join(SHAPES, "freekd.yaml")
    opts = tiny(tmp, "freekd", "DISTILLER.TEACHER_WEIGHTS", weights, "FREEKD.PROMPT_EPOCHS", "1", "FREEKD.NUM_STAGES", "3")
    stage1 = tool(PROMPT, "--cfg", cfg, *opts)   # stage 1 alone
    assert_ok(stage1)
    path = re.search(r"Saved the prompts to (.*)", stage1.stdout).group(1).strip()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    os.remove(path)
    stage2 = tool_in_process(TRAIN, "--cfg", cfg, *opts)   # no prompt file: the DENSE_PROMPTS stage runs, then stage 2
    assert_ok(stage2)
    record = torch.load(path, weights_only=True)
    assert record["feature_indices"] == [2, 3, 4] and record["tokens"] == 6 and record["epoch"] == 1
    assert record["prompts"]["0.tokens"].shape == (4, 6, 256)
    (metrics,) = records(run_dir_of(stage2))
    assert metrics["loss_kd"] > 0 and metrics["loss_reg"] > 0 and metrics["loss_feat"] > 0
    state = torch.load(os.path.join(run_dir_of(stage2), "latest"), weights_only=True)
    torch.testing.assert_close(state["model"]["prompts.0.tokens"], record["prompts"]["0.tokens"])  # frozen


def test_resume_and_checkpoint_round_trip(tool_in_process, teacher):
    tmp, weights = teacher
    opts = tiny(tmp, "resumed", "DISTILLER.TEACHER_WEIGHTS", weights)
    first = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, "pkd.yaml"), *opts)
    assert_ok(first)
    run_dir = run_dir_of(first)
    latest = torch.load(os.path.join(run_dir, "latest"), weights_only=True)
    assert latest["epoch"] == 1 and any(k.startswith("teacher.") for k in latest["model"])
    resumed = tool_in_process(TRAIN, "SOLVER.EPOCHS", "2", "--resume", run_dir)   # no --cfg: the checkpoint's own config
    assert_ok(resumed)
    assert "Resumed from" in resumed.stdout and [r["epoch"] for r in records(run_dir)] == [1, 2]
    again = torch.load(os.path.join(run_dir, "latest"), weights_only=True)
    assert again["epoch"] == 2
    teacher_keys = [k for k in latest["model"] if k.startswith("teacher.")]
    for key in teacher_keys:  # the teacher never changes
        torch.testing.assert_close(again["model"][key], latest["model"][key])
    changed = [k for k in latest["model"] if k.startswith("student.") and latest["model"][k].is_floating_point()
               and not torch.equal(latest["model"][k], again["model"][k])]
    assert changed


def test_missing_teacher_and_unknown_model_are_one_line_errors(tool_in_process, tmp_path):
    result = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, "cwd.yaml"),
                  *tiny(tmp_path, "x", "DISTILLER.TEACHER_WEIGHTS", str(tmp_path / "none.pth")))
    assert_user_error(result, "none.pth", "not found")
    result = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, "student.yaml"), *tiny(tmp_path, "y", "DISTILLER.STUDENT", "fcos_vgg16"))
    assert_user_error(result, "Unknown dense model")
