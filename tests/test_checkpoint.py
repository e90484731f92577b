"""Checkpoint files: atomic writes, weights-only reads, and one clear error per bad file."""

import os
import pickle

import pytest
import torch

from mdistiller.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint, student_state_dict
from mdistiller.errors import CheckpointError


def test_round_trip_is_strict_and_weights_only(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = str(tmp_path / "ckpt")
    save_checkpoint({"model": net.state_dict(), "epoch": 3, "cfg": "A: 1\n"}, path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and state["cfg"] == "A: 1\n"
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    load_weights(other, load_checkpoint(path)["model"], "test")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net.eval()(x), other.eval()(x))
    assert [p for p in os.listdir(tmp_path)] == ["ckpt"]


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(path))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="Checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope"))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil"
    with open(path, "wb") as f:
        torch.save({"model": {}, "x": Payload(str(marker))}, f, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="Refused to load"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_other_architecture_names_keys():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(CheckpointError, match=r"missing 0.weight.*unexpected 1.weight"):
        load_weights(net, {"0.bias": torch.zeros(4), "1.weight": torch.zeros(1)}, "ckpt")
    with pytest.raises(CheckpointError, match=r"wrong shape 0.weight"):
        load_weights(net, {"0.weight": torch.zeros(4, 3, 1, 1), "0.bias": torch.zeros(4)}, "ckpt")


def test_student_weights_from_every_layout():
    w = {"conv.weight": torch.ones(1)}
    assert student_state_dict({"model": w}) == w
    assert student_state_dict({"model": {"student.conv.weight": torch.ones(1), "teacher.x": torch.ones(1)}}).keys() == w.keys()
    assert student_state_dict({"model": {"module.student.conv.weight": torch.ones(1)}}).keys() == w.keys()
