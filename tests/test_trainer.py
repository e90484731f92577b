"""The trainer on the real digits data: learning, checkpoints, logs, exact resume."""

import json
import os

import pytest
import torch

from mdistiller.engine.checkpoint import load_checkpoint

from helpers import make_trainer

pytestmark = pytest.mark.slow


def batch_loss(trainer, batch):
    trainer.distiller.eval()
    with torch.no_grad():
        logits = trainer.distiller(image=batch[0])
    return torch.nn.functional.cross_entropy(logits, batch[1]).item()


def test_one_epoch_lowers_loss_and_writes_run(tmp_path):
    trainer = make_trainer(tmp_path, "SOLVER.EPOCHS=1")
    batch = next(iter(trainer.val_loader))
    before = batch_loss(trainer, batch)
    trainer.train()
    assert batch_loss(trainer, batch) < before * 0.8
    run = tmp_path / "run"
    for name in ("latest", "best", "student_latest", "student_best", "cfg.yaml", "worklog.txt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert any(n.startswith("events") for n in os.listdir(run / "train.events"))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and record["test_acc"] == trainer.best_acc
    state = torch.load(run / "latest", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "rng" in state and "TYPE: digits" in state["cfg"]
    assert "epoch: 1" in (run / "worklog.txt").read_text()


def test_resume_equals_uninterrupted(tmp_path):
    straight = make_trainer(tmp_path, "SOLVER.EPOCHS=2", name="straight")
    straight.train()
    first = make_trainer(tmp_path, "SOLVER.EPOCHS=1", name="split")
    first.train()
    second = make_trainer(tmp_path, "SOLVER.EPOCHS=2", name="split")
    second.train(resume=True)
    a = load_checkpoint(str(tmp_path / "straight" / "latest"))
    b = load_checkpoint(str(tmp_path / "split" / "latest"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["best_acc"] == b["best_acc"]
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
