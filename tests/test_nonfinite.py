"""Non-finite losses on the real trainer: the step that produces NaN / inf stops the run naming
the term, epoch and step, before its backward pass, with `latest` left at the last good state;
SOLVER.SKIP_NONFINITE skips such batches without a trace (weights, optimizer, BatchNorm statistics)
and counts them in the log. The multi-process form is in tests/test_reliability_processes.py."""

import json
import math

import pytest
import torch

from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import NonFiniteLossError, TrainingStopped

from helpers import assert_same_state, kd_trainer, make_trainer, poison, signal_at_call

pytestmark = pytest.mark.slow


def test_nonfinite_term_stops_the_run_and_keeps_latest(tmp_path, torch_single_thread):
    kd_trainer(tmp_path, "run", 1, ()).train()
    latest = tmp_path / "run" / "latest"
    before = latest.read_bytes()
    trainer = kd_trainer(tmp_path, "run", 2, ())
    poison(trainer, from_call=4)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train(resume=True)
    message = str(error.value)
    steps = len(trainer.train_loader)
    assert f"loss_kd=inf at epoch 2 step 4/{steps}" in message and "loss_ce" not in message
    assert "holds the last good state" in message and "SOLVER.SKIP_NONFINITE" in message
    assert latest.read_bytes() == before
    # the poisoned step took no optimizer step: the parameters are those of three good steps, as a
    # run stopped (SIGTERM) after its third step saved them
    stopped = kd_trainer(tmp_path, "run", 2, ())
    signal_at_call(stopped, 3)
    with pytest.raises(TrainingStopped):
        stopped.train(resume=True)
    three_steps = load_checkpoint(str(latest))["model"]
    for name, param in trainer.distiller.named_parameters():
        assert torch.equal(param, three_steps[name]), name


def test_skip_nonfinite_leaves_no_trace_and_counts(tmp_path, torch_single_thread):
    trainer = make_trainer(tmp_path, "SOLVER.EPOCHS=2", "SOLVER.SKIP_NONFINITE=True", "LOG.SAVE_CHECKPOINT_FREQ=1")
    steps = len(trainer.train_loader)
    poison(trainer, from_call=steps + 1, image_nan=True)  # every step of epoch 2
    trainer.train()
    run = tmp_path / "run"
    epoch_1, epoch_2 = load_checkpoint(str(run / "epoch_1")), load_checkpoint(str(run / "epoch_2"))
    epoch_2["epoch"], epoch_2["optimizer"]["param_groups"] = 1, epoch_1["optimizer"]["param_groups"]
    assert_same_state(epoch_1, epoch_2)  # parameters, BatchNorm statistics, momentum buffers
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, steps]
    assert math.isfinite(records[1]["test_acc"]) and records[1]["test_acc"] == records[0]["test_acc"]
