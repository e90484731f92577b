"""Exact resume on the real trainer (KD with a teacher, digits, CPU, EXPERIMENT.DETERMINISTIC):
two epochs straight equal one epoch, a stop, a resume that extends the run and is stopped by a
real SIGTERM in the middle of epoch 2, and a second resume. Every parameter and buffer, the
optimizer state and the logged epochs are compared with torch.equal / ==, for the in-memory loader
(DATASET.FAST_AUG) and the DataLoader path with and without worker processes."""

import json
import os
import signal

import pytest
import torch

from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import TrainingStopped
from mdistiller.models import cifar_model_dict

from test_trainer import make_trainer

EPOCHS = 2
TIMING = ("train_seconds", "img_per_s")


def kd_trainer(tmp_path, name, epochs, loader_opts):
    teacher = tmp_path / "teacher.pth"
    if not teacher.exists():
        torch.manual_seed(1)
        torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher)
    return make_trainer(tmp_path, "DISTILLER.TYPE=KD", f"DISTILLER.TEACHER_WEIGHTS={teacher}",
                        f"SOLVER.EPOCHS={epochs}", *loader_opts, name=name)


def signal_at_call(trainer, call, signum=signal.SIGTERM):
    """Make the trainer's `call`-th forward pass send `signum` to this very process."""
    model, calls = trainer.train_model, [0]

    def forward(**kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return model(**kwargs)

    trainer.train_model = forward


def records(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_state(a, b):
    assert a["epoch"] == b["epoch"] and a["best_acc"] == b["best_acc"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for index in state_a:
        assert state_a[index].keys() == state_b[index].keys()
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)


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
