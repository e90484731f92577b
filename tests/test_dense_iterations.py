"""Iteration-based dense runs (SOLVER.ITERS, mmsegmentation's 80k schedules): exactly ITERS steps,
the poly LR set every iteration, validation / checkpoints every VAL_INTERVAL iterations, and runs
stopped mid-interval (across the loader's pass boundaries) that resume to the weights, optimizer
state and logs of the run that went straight through."""

import json
import signal

import pytest
import torch

from dense_helpers import dense_cfg
from helpers import assert_same_state, signal_at_call
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import ConfigError, TrainingStopped
from mdistiller_dense.build import build_dense_run
from mdistiller_dense.trainer import DenseTrainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

# 8 shapes images in batches of 2: 4 iterations a pass. 10 iterations validated every 3: intervals
# of 3, 3, 3, 1 starting at iterations 0, 3, 6, 9 (mid-pass), passes starting at 4 and 8 (mid-interval).
ITERS_OPTS = ["SOLVER.ITERS", "10", "SOLVER.VAL_INTERVAL", "3", "SOLVER.LR_SCHEDULER", "poly", "SOLVER.LR", "0.01",
              "SOLVER.POLY_MIN_LR", "0.0001", "EXPERIMENT.DETERMINISTIC", "True", "SOLVER.EPOCHS", "1"]


def _trainer(tmp_path, name, extra=()):
    cfg = dense_cfg(tmp_path, "NONE", "fcn_resnet18", "fcn_resnet18", [*ITERS_OPTS, *extra])
    torch.manual_seed(0)  # the same initial student in every run
    train_loader, val_loader, distiller = build_dense_run(cfg)
    return DenseTrainer(name, distiller, train_loader, val_loader, cfg, run_dir=str(tmp_path / name))


def _count_steps(trainer):
    """Record the LR of every forward pass (= optimisation step) of the trainer."""
    seen, model = [], trainer.train_model

    def forward(**kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return model(**kwargs)

    trainer.train_model = forward
    return seen


def _records(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("train_seconds", "img_per_s")} for row in rows]


def test_iters_run_stops_at_iters_and_resumes_to_the_same_weights(tmp_path):
    straight = _trainer(tmp_path, "straight")
    assert len(straight.train_loader) == 4 and straight.num_epochs == 4
    lrs = _count_steps(straight)
    straight.train()
    assert len(lrs) == 10                                                   # exactly ITERS steps
    assert lrs == pytest.approx([(0.01 - 1e-4) * (1 - i / 10) ** 0.9 + 1e-4 for i in range(10)])
    assert [r["epoch"] for r in _records(tmp_path / "straight")] == [1, 2, 3, 4]

    first = _trainer(tmp_path, "split")
    signal_at_call(first, 5)                                                # iteration 4: interval 2, pass 2
    with pytest.raises(TrainingStopped, match="epoch 2 step 2/3"):
        first.train()
    assert load_checkpoint(str(tmp_path / "split" / "latest"))["progress"]["step"] == 2

    second = _trainer(tmp_path, "split")
    signal_at_call(second, 3)                                               # iteration 7: interval 3 step 2
    with pytest.raises(TrainingStopped, match="epoch 3 step 2/3"):
        second.train(resume=True)

    third = _trainer(tmp_path, "split")
    rest = _count_steps(third)
    third.train(resume=True)
    assert len(rest) == 2 and rest == pytest.approx(lrs[8:])
    assert_same_state(load_checkpoint(str(tmp_path / "straight" / "latest")),
                      load_checkpoint(str(tmp_path / "split" / "latest")))
    assert _records(tmp_path / "straight") == _records(tmp_path / "split")


def test_val_interval_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.VAL_INTERVAL must be at least 1"):
        _trainer(tmp_path, "bad", ["SOLVER.VAL_INTERVAL", "0"])
