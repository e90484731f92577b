"""Exact resume on the real trainer (KD with a teacher, digits, CPU, EXPERIMENT.DETERMINISTIC):
two epochs straight equal one epoch, a stop, a resume that extends the run and is stopped by a
real SIGTERM in the middle of epoch 2, and a second resume. Every parameter and buffer, the
optimizer state and the logged epochs are compared with torch.equal / ==, for the in-memory loader
(DATASET.FAST_AUG) and the DataLoader path with and without worker processes."""

import json
import os
import signal

import pytest

from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import TrainingStopped

from helpers import assert_same_state, kd_trainer, signal_at_call

pytestmark = pytest.mark.slow

EPOCHS = 2
TIMING = ("train_seconds", "img_per_s")


def records(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize("loader_opts", [
    ("DATASET.FAST_AUG=True",),
    ("DATASET.FAST_AUG=False", "DATASET.NUM_WORKERS=0"),
    ("DATASET.FAST_AUG=False", "DATASET.NUM_WORKERS=2"),
], ids=["in_memory", "dataloader", "dataloader_workers"])
def test_stop_and_resume_equal_straight_run(tmp_path, loader_opts, torch_single_thread):
    straight = kd_trainer(tmp_path, "straight", EPOCHS, loader_opts)
    straight.train()
    steps = len(straight.train_loader)

    kd_trainer(tmp_path, "split", 1, loader_opts).train()
    extended = kd_trainer(tmp_path, "split", EPOCHS, loader_opts)
    signal_at_call(extended, steps // 2)
    with pytest.raises(TrainingStopped) as stopped:
        extended.train(resume=True)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert f"epoch 2 step {steps // 2}/{steps}" in str(stopped.value) and "--resume" in str(stopped.value)
    run = tmp_path / "split"
    mid = load_checkpoint(str(run / "latest"))
    assert mid["epoch"] == 1 and mid["progress"]["step"] == steps // 2
    assert [r["epoch"] for r in records(run)] == [1]

    kd_trainer(tmp_path, "split", EPOCHS, loader_opts).train(resume=str(run / "latest"))
    assert_same_state(load_checkpoint(str(tmp_path / "straight" / "latest")), load_checkpoint(str(run / "latest")))
    assert records(tmp_path / "straight") == records(run)
    assert not any(name.startswith(".tmp_") for name in os.listdir(run))
