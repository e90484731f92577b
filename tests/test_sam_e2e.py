"""The Segment Anything pipeline through the tools on a tiny shapes set: the SAM teacher trained
alone, SAM_MSE and FREEKD (both stages from one command), tools/eval_dense.py's comparison, --resume
of either stage, and a 2-process (gloo) run whose validation mIoU is that of the whole set."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from helpers import WORKER, finish, process_env
from mdistiller.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train_dense.py")
EVAL = os.path.join(REPO_ROOT, "tools", "eval_dense.py")
SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")


def tiny(tmp, *extra):
    """Overrides for seconds-long runs: 8 + 4 images of 64 px, one-iteration intervals."""
    return ["DATASET.ROOT", str(tmp / "data"), "LOG.PREFIX", str(tmp / "out"), "DATASET.NUM_TRAIN", "8",
            "DATASET.NUM_VAL", "4", "DATASET.SHAPES.IMAGE_SIZE", "64", "DATASET.SHAPES.MIN_OBJECT_SIZE", "12",
            "DATASET.SHAPES.MAX_OBJECT_SIZE", "28", "SAM.IMAGE_SIZE", "64", "SAM.MASKS_PER_IMAGE", "2",
            "SOLVER.BATCH_SIZE", "4", "DATASET.TEST.BATCH_SIZE", "4", "DATASET.NUM_WORKERS", "0",
            "SOLVER.ITERS", "2", "SOLVER.VAL_INTERVAL", "1", "SOLVER.WARMUP_ITERS", "0", "SAM.ENCODER_ITERS", "2",
            "FREEKD.PROMPT_EPOCHS", "1", "FREEKD.DWT_LEVELS", "1", *extra]


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import run_tool_in_process

    tmp = tmp_path_factory.mktemp("sam_e2e")
    result = run_tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, "sam_teacher.yaml"), *tiny(tmp))
    assert_ok(result)
    return tmp, str(tmp / "out" / "shapes" / "sam_teacher" / "student_best")


def test_sam_mse_and_freekd_run_both_stages_and_evaluate_against_the_teacher(tool_in_process, teacher):
    tmp, weights = teacher
    teacher_state = load_checkpoint(weights)["model"]
    for method, kind in (("sam_mse", "sam_mse"), ("sam_freekd", "freekd")):
        result = tool_in_process(TRAIN, "--cfg", os.path.join(SHAPES, f"{method}.yaml"),
                                 *tiny(tmp, "DISTILLER.TEACHER_WEIGHTS", weights))
        assert_ok(result)
        run_dir = tmp / "out" / "shapes" / method
        (encoder_file,) = (tmp / "out" / "shapes" / "sam_encoders").glob(f"{kind}_shapes_*.pth")
        encoder = load_checkpoint(str(encoder_file))
        assert encoder["iteration"] == 2
        stage1 = records(os.path.splitext(str(encoder_file))[0])
        assert [r["epoch"] for r in stage1] == [1, 2] and -100 <= stage1[-1]["test_acc"] <= 100
        assert ("loss_kd" in stage1[-1]) == (kind == "freekd") and stage1[-1].get("loss_kd", 1) > 0
        stage2 = records(str(run_dir))
        assert [r["epoch"] for r in stage2] == [1, 2]
        assert stage2[-1]["test_acc"] == stage2[-1]["test_box_miou"] and 0 <= stage2[-1]["test_point_miou"] <= 100
        student = load_checkpoint(str(run_dir / "student_latest"))["model"]
        for key, value in encoder["encoder"].items():  # stage 2 kept the stage-1 encoder frozen
            assert torch.equal(student[f"image_encoder.{key}"], value), key
        for key in ("prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight"):
            assert torch.equal(student[key], teacher_state[key]) == key.startswith("prompt_encoder"), key
    evaluated = tool_in_process(EVAL, "-c", str(run_dir / "student_latest"), "--teacher")
    assert_ok(evaluated)
    rows = [line.split("|")[1:-1] for line in evaluated.stdout.splitlines() if line.startswith("| sam_")]
    assert [row[0].strip() for row in rows] == ["sam_tinyvit_5m", "sam_vit_mini"]
    assert float(rows[0][2]) == pytest.approx(stage2[-1]["test_box_miou"], abs=0.01)  # same model, same images
    assert float(rows[0][5]) == pytest.approx(5.74, abs=0.01)


def test_resume_continues_stage_1_then_stage_2(tool_in_process, teacher):
    tmp, weights = teacher
    base = tiny(tmp, "DISTILLER.TEACHER_WEIGHTS", weights, "EXPERIMENT.NAME", "resumed", "SAM.ENCODER_PATH",
                str(tmp / "resume_encoder.pth"))
    cfg = ["--cfg", os.path.join(SHAPES, "sam_mse.yaml")]
    assert_ok(tool_in_process(TRAIN, *cfg, *base, "SAM.ENCODER_ITERS", "1", "SOLVER.ITERS", "1"))
    result = tool_in_process(TRAIN, *cfg, *base, "SAM.ENCODER_ITERS", "2", "SOLVER.ITERS", "2", "--resume")
    assert_ok(result)
    assert "Resumed from" in result.stdout.split("== SAM_MSE stage 1")[1].split("Run directory")[0]
    assert [r["epoch"] for r in records(str(tmp / "resume_encoder"))] == [1, 2]
    assert load_checkpoint(str(tmp / "resume_encoder.pth"))["iteration"] == 2
    result = tool_in_process(TRAIN, *cfg, *base, "SAM.ENCODER_ITERS", "2", "SOLVER.ITERS", "3", "--resume")
    assert_ok(result)
    assert "stage SAM_ENCODER: done" in result.stdout
    assert re.search(r"Resumed from .*resumed/latest at epoch 3", result.stdout)
    assert [r["epoch"] for r in records(str(tmp / "out" / "shapes" / "resumed"))] == [1, 2, 3]


def test_two_processes_train_both_stages_and_score_the_whole_validation_set(tool_in_process, teacher, tmp_path):
    data, weights = teacher
    args = ["--cfg", os.path.join(SHAPES, "sam_mse.yaml"), *tiny(data, "DISTILLER.TEACHER_WEIGHTS", weights),
            "EXPERIMENT.NAME", "ddp", "LOG.PREFIX", str(tmp_path / "out"), "SAM.EMBEDDING_DIR", str(tmp_path / "store"),
            "SOLVER.BATCH_SIZE", "2"]
    env = dict(process_env(), MDISTILLER_TEST_TOOL=TRAIN)
    procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "store_file"), str(rank), "2", *args],
                              cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    finish(procs, timeout=900)
    run_dir = tmp_path / "out" / "shapes" / "ddp"
    stage2 = records(str(run_dir))
    assert [r["epoch"] for r in stage2] == [1, 2]
    assert len(list((tmp_path / "store").glob("*/*.pt"))) == 12  # every train and val image once
    evaluated = tool_in_process(EVAL, "-c", str(run_dir / "student_latest"))
    assert_ok(evaluated)
    row = next(line.split("|")[1:-1] for line in evaluated.stdout.splitlines() if line.startswith("| sam_"))
    assert float(row[2]) == pytest.approx(stage2[-1]["test_box_miou"], abs=0.01)
    assert int(row[4]) == int(stage2[-1]["test_masks"])  # both shards' masks counted once
