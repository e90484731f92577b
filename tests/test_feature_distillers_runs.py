"""Short real runs of AT, OFD, RKD, FITNET, KDSVD, NST, PKT, SP, VID: the digits demo setting
in-process through the Trainer, and each configs/cifar100/<method>/res32x4_res8x4.yaml through
`train_run` on tiny CIFAR-100 files in the real format."""

import json
import math
import os
from itertools import islice

import pytest
import torch

from conftest import REPO_ROOT
from fake_data import write_fake_cifar100
from mdistiller.dataset import get_dataset
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.engine.build import build_distiller
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.run import train_run
from mdistiller.engine.trainer import Trainer
from mdistiller.engine.utils import seed_everything
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.slow

METHODS = ("AT", "OFD", "RKD", "FITNET", "KDSVD", "NST", "PKT", "SP", "VID")
DIGITS_STUDENT = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")


def save_teacher(path, name, num_classes):
    torch.manual_seed(0)
    teacher = cifar_model_dict[name][0](num_classes=num_classes)
    torch.save({"model": teacher.state_dict(), "epoch": 1}, path)
    return teacher.state_dict()


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "wrn_16_2.pth"
    return str(path), save_teacher(path, "wrn_16_2", 10)


@pytest.mark.parametrize("method", METHODS)
def test_digits_run_has_finite_losses(method, digits_teacher, tmp_path):
    """The quick-start setting (wrn_16_2 -> resnet8, 16x16, bf16 autocast), two steps and a validation."""
    teacher_path, teacher_state = digits_teacher
    cfg = build_cfg(DIGITS_STUDENT, [f"DISTILLER.TYPE={method}", f"DISTILLER.TEACHER_WEIGHTS={teacher_path}",
                                     f"LOG.PREFIX={tmp_path}", "SOLVER.EPOCHS=1", "SOLVER.BATCH_SIZE=32"])
    assert cfg.DATASET.IMAGE_SIZE == 16 and cfg.SOLVER.AMP
    seed_everything(0)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    distiller = build_distiller(cfg, num_data, num_classes)
    student_before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    trainer = Trainer(method, distiller, list(islice(train_loader, 2)), list(islice(val_loader, 1)), cfg)
    trainer.train()
    record = read_metrics(trainer.run_dir)[0]
    assert math.isfinite(record["loss_kd"]) and math.isfinite(record["loss_ce"]) and record["loss_kd"] != 0
    assert 0 <= record["test_acc"] <= 100
    assert any(not torch.equal(v, distiller.student.state_dict()[k]) for k, v in student_before.items())
    for key, value in distiller.teacher.named_parameters():
        assert torch.equal(value.detach(), teacher_state[key]), key


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar100(root / "data", num_train=8, num_test=4)
    teacher = root / "resnet32x4.pth"
    save_teacher(teacher, "resnet32x4", 100)
    return root, teacher


@pytest.mark.parametrize("method", METHODS)
def test_cifar_res32x4_res8x4_config_trains_through_train_run(method, cifar_files, tmp_path, monkeypatch):
    root, teacher = cifar_files
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    config = os.path.join(REPO_ROOT, "configs", "cifar100", method.lower(), "res32x4_res8x4.yaml")
    cfg = build_cfg(config, [f"DATASET.ROOT={root / 'data'}", f"DISTILLER.TEACHER_WEIGHTS={teacher}",
                             f"LOG.PREFIX={tmp_path}", "SOLVER.EPOCHS=1", "SOLVER.BATCH_SIZE=4",
                             "DATASET.NUM_WORKERS=0", "DATASET.TEST.BATCH_SIZE=4", "LOG.PROGRESS_BAR=False"])
    trainer = train_run(cfg, verbose=False)
    record = read_metrics(trainer.run_dir)[0]
    assert math.isfinite(record["loss_kd"]) and math.isfinite(record["train_loss"])
    assert os.path.basename(trainer.run_dir).startswith(f"{method.lower()},res32x4,res8x4")
    saved = torch.load(os.path.join(trainer.run_dir, "latest"), weights_only=True)["model"]
    assert set(saved) == set(trainer.distiller.state_dict())
