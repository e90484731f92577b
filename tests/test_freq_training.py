"""The frequency / attention methods through the real trainer: a short digits run of each lowers its
loss (FreeKD and AFPKD with stage 1's starting prompts), tools/eval.py evaluates an SFAKD run the way
it trained, and one epoch runs through train_run on fake CIFAR-100."""

import copy
import math
import os
import shutil

import pytest
import torch

from conftest import REPO_ROOT, run_tool_in_process
from fake_data import write_fake_cifar100
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.loggers import read_metrics
from mdistiller.engine.prompt_learning import initial_prompt_file
from mdistiller.engine.run import train_run
from mdistiller.models import cifar_model_dict
from helpers import make_trainer

pytestmark = pytest.mark.slow

METHODS = ("SFAKD", "CANKD", "CATKD")
DIGITS_METHODS = METHODS + ("FREEKD", "AFPKD", "FAMKD")
EVAL = os.path.join(REPO_ROOT, "tools", "eval.py")
# Parameter-name prefixes each method adds to the full checkpoint (res32x4 -> res8x4: 256 channels
# on both sides, so CANKD needs no connector).
EXTRA_KEYS = {"SFAKD": ("sfa.", "transfer."), "CANKD": ("can.",), "CATKD": ()}


def save_teacher(path, name: str, num_classes: int) -> str:
    torch.manual_seed(0)
    torch.save({"model": cifar_model_dict[name][0](num_classes=num_classes).state_dict()}, path)
    return str(path)


def fixed_batch_loss(distiller, batch) -> float:
    """The method's total training loss on one batch, as a training step computes it (BatchNorm on
    batch statistics); the running statistics it updates are put back."""
    state = copy.deepcopy(distiller.state_dict())
    distiller.train()
    with torch.no_grad():
        _, losses = distiller(image=batch[0], target=batch[1], epoch=1)
    distiller.load_state_dict(state)
    return sum(value.item() for value in losses.values())


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """One epoch of each method on the digits (16x16; 8x8 for FREEKD, AFPKD, FAMKD), wrn_16_2 -> resnet8."""
    root = tmp_path_factory.mktemp("digits")
    teacher = save_teacher(root / "teacher.pth", "wrn_16_2", 10)
    runs = {}
    for method in DIGITS_METHODS:
        size = 16 if method in METHODS else 8  # the multi-stage methods at 8x8 keep the test short
        opts = [f"DISTILLER.TYPE={method}", "DISTILLER.TEACHER=wrn_16_2", f"DISTILLER.TEACHER_WEIGHTS={teacher}",
                f"DATASET.IMAGE_SIZE={size}", "SOLVER.EPOCHS=1"]
        if method in ("FREEKD", "AFPKD"):
            opts.append(f"{method}.PROMPT_PATH={root / method}.pth")
            cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "digits", "student.yaml"), opts)
            model = cifar_model_dict["wrn_16_2"][0](num_classes=10)
            model.load_state_dict(torch.load(teacher, weights_only=True)["model"])
            initial_prompt_file(cfg, model)
        trainer = make_trainer(root, *opts, name=method)
        batch = next(iter(trainer.val_loader))
        before = fixed_batch_loss(trainer.distiller, batch)
        trainer.train()
        runs[method] = (trainer, before, fixed_batch_loss(trainer.distiller, batch))
    return runs


@pytest.mark.parametrize("method", DIGITS_METHODS)
def test_short_digits_run_lowers_the_loss(digits_runs, method):
    trainer, before, after = digits_runs[method]
    assert math.isfinite(after) and after < 0.9 * before, (before, after)


def test_eval_tool_on_sfakd_full_checkpoint(digits_runs):
    trainer, _, _ = digits_runs["SFAKD"]
    run = trainer.run_dir
    result = run_tool_in_process(EVAL, "-m", "resnet8", "-c", os.path.join(run, "best"), "-d", "digits", "-bs", "100")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Top-1: {trainer.best_acc:.2f}" in result.stdout, (result.stdout, trainer.best_acc)

    beside = run_tool_in_process(EVAL, "-m", "resnet8", "-c", os.path.join(run, "student_best.pth"), "-d", "digits",
                                 "-bs", "100")  # read with 'best' beside it, as the SFAKD README evaluates
    assert beside.returncode == 0 and f"Top-1: {trainer.best_acc:.2f}" in beside.stdout, beside.stderr[-2000:]

    alone = os.path.join(os.path.dirname(run), "sfakd_student_alone")
    os.makedirs(alone, exist_ok=True)
    shutil.copy(os.path.join(run, "student_best"), alone)
    student_only = run_tool_in_process(EVAL, "-m", "resnet8", "-c", os.path.join(alone, "student_best"), "-d", "digits")
    lines = [line for line in student_only.stderr.splitlines() if line.strip()]
    assert student_only.returncode == 2 and len(lines) == 1, student_only.stderr
    assert "holds only the student" in lines[0] and "'best'" in lines[0]


@pytest.fixture(scope="module")
def cifar_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar100(root / "data", num_train=16, num_test=8)
    return root, save_teacher(root / "resnet32x4.pth", "resnet32x4", 100)


@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_through_train_run_on_fake_cifar100(cifar_setup, method, tmp_path, monkeypatch):
    root, teacher_file = cifar_setup
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    config = os.path.join(REPO_ROOT, "configs", "cifar100", method.lower(), "res32x4_res8x4.yaml")
    cfg = build_cfg(config, [f"DATASET.ROOT={root / 'data'}", "DATASET.NUM_WORKERS=0", "SOLVER.EPOCHS=1",
                             "SOLVER.BATCH_SIZE=8", f"LOG.PREFIX={tmp_path}", "LOG.PROGRESS_BAR=False",
                             f"DISTILLER.TEACHER_WEIGHTS={teacher_file}"])
    run = tmp_path / "run"
    train_run(cfg, run_dir=str(run), verbose=False)
    record = read_metrics(str(run))[0]
    loss_terms = {"SFAKD": {"loss_feat"}}.get(method, {"loss_ce", "loss_kd"})
    assert record["epoch"] == 1 and loss_terms <= set(record)
    assert all(math.isfinite(record[term]) for term in loss_terms)
    state = torch.load(run / "latest", weights_only=True)["model"]
    for prefix in EXTRA_KEYS[method]:
        assert any(key.startswith(prefix) for key in state), prefix
    teacher = torch.load(teacher_file, weights_only=True)["model"]
    for key, value in teacher.items():  # loaded, frozen, never changed (BatchNorm statistics included)
        assert torch.equal(state[f"teacher.{key}"], value), key
