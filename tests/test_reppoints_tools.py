"""The RepPoints shapes configs as a user runs them, on a tiny generated shapes set (64 px, 8 + 4
images, one epoch): the teacher through tools/train_dense.py (a subprocess), every
reppoints_<method>.yaml taught by it (FreeKD's stage 1 run by stage 2), a resume, tools/eval_dense.py
on a RepPoints checkpoint giving the AP the run recorded; and a RepPoints CWD (frequency domain) pair
under DDP (2 gloo processes, tests/ddp_matrix_worker.py): both ranks identical, resumed, and the COCO
AP scored under 2 processes equal to eval_dense's in one. Marked `e2e`."""

import io
import os
import re
import sys
from contextlib import redirect_stdout

import pytest
import torch

from conftest import REPO_ROOT
from dense_helpers import SHAPES_OPTS, dense_cfg, save_teacher
from helpers import assert_ok
from mdistiller.engine.loggers import read_metrics
from mdistiller_dense.evaluation import COCO_STATS
from test_dense_tools_e2e import records, run_dir_of, tiny
from test_ddp_matrix import check_matrix

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train_dense.py")
EVAL = os.path.join(REPO_ROOT, "tools", "eval_dense.py")
SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")
PAIR = ["DISTILLER.TEACHER", "reppoints_resnet18_fpn", "DISTILLER.STUDENT", "reppoints_resnet18_fpn"]


def test_reppoints_shapes_configs_train_resume_and_evaluate(tool, tool_in_process, tmp_path):
    teacher = tool(TRAIN, "--cfg", os.path.join(SHAPES, "reppoints_teacher.yaml"), *tiny(tmp_path, "teacher"), *PAIR)
    assert_ok(teacher)
    weights = os.path.join(run_dir_of(teacher), "student_best")
    for method in ("student", "freekd", "cankd", "cwd", "pkd"):
        opts = [*tiny(tmp_path, method, "DISTILLER.TEACHER_WEIGHTS", weights), *PAIR, "FREEKD.PROMPT_EPOCHS", "1"]
        result = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, f"reppoints_{method}.yaml"), *opts)
        assert_ok(result)
        (record,) = records(run_dir_of(result))
        assert 0.0 <= record["test_acc"] <= 100.0 and record["test_acc"] == record["test_ap"]
        assert record["loss_pts_refine"] > 0 and record["loss_cls"] > 0
        if method != "student":
            assert record["loss_kd"] > 0
    run_dir = run_dir_of(result)  # PKD
    resumed = tool_in_process(TRAIN, "SOLVER.EPOCHS", "2", "--resume", run_dir)
    assert_ok(resumed)
    assert "Resumed from" in resumed.stdout and [r["epoch"] for r in records(run_dir)] == [1, 2]
    evaluated = tool(EVAL, "-c", os.path.join(run_dir, "student_best"))
    assert_ok(evaluated)
    ap = float(re.search(r"ap: ([\d.]+)", evaluated.stdout).group(1))
    assert ap == pytest.approx(max(r["test_acc"] for r in records(run_dir)), abs=0.01)


def test_reppoints_pair_under_two_processes(tmp_path):
    cfg = dense_cfg(tmp_path, "NONE", "reppoints_resnet18_fpn", "reppoints_resnet18_fpn")
    save_teacher(cfg)
    args = ["--cfg", os.path.join(SHAPES, "reppoints_cwd.yaml"), *SHAPES_OPTS, "DATASET.ROOT", str(tmp_path / "data"),
            "LOG.PREFIX", str(tmp_path / "dense"), "LOG.SAVE_CHECKPOINT_FREQ", "1", *PAIR,
            "DISTILLER.TEACHER_WEIGHTS", cfg.DISTILLER.TEACHER_WEIGHTS]
    case = {"name": "reppoints_CWD", "tool": "train_dense", "stage1": "", "args": args}
    check_matrix(tmp_path, [case], tmp_path / "dense_out")
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import eval_dense

    run = tmp_path / "dense" / "reppoints_CWD"
    scored = read_metrics(str(run))[2]  # epoch 3, scored under 2 processes
    printed = io.StringIO()
    with redirect_stdout(printed):
        eval_dense.main(["-c", str(run / "student_3"), "DATASET.ROOT", str(tmp_path / "data")])
    assert printed.getvalue().strip() == "  ".join(f"{s}: {scored['test_' + s]:.2f}" for s in COCO_STATS)
    latest = torch.load(run / "latest", weights_only=True)
    assert latest["epoch"] == 4 and any(k.startswith("student.head.reppoints_pts_refine_conv") for k in latest["model"])
