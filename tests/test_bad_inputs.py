"""Bad inputs through the tools, as a user meets them: one `error: ...` line on stderr, exit status
2, no traceback, nothing in the working tree created or overwritten. The tools run in this process
(conftest's `run_tool_in_process`: runpy, as `python tools/<tool>.py` runs them) to keep the suite
fast; the forms run as subprocesses are in tests/test_tools_e2e.py."""

import os
import pickle
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, run_tool_in_process
from fake_data import write_fake_tiny_imagenet
from mdistiller.dataset import build_datasets, build_loaders
from mdistiller.dataset.base import UnreadableImageWarning
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.checkpoint import save_checkpoint
from mdistiller.models import cifar_model_dict

TOOLS = os.path.join(REPO_ROOT, "tools")
TRAIN = os.path.join(TOOLS, "train.py")
EVAL = os.path.join(TOOLS, "eval.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")


@pytest.fixture
def cli(tmp_path):
    """`cli(tool, *args)` -> the one error line, after checking exit 2, a single stderr line and
    that no file under tmp_path was changed or removed, nor created unless `run_started` (an error
    found once the run directory exists: after the data are built, or during training)."""

    def run(tool: str, *args: str, run_started: bool = False) -> str:
        before = tree(tmp_path)
        result = run_tool_in_process(tool, *args, cwd=str(tmp_path))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        after = tree(tmp_path)
        assert {name: after.get(name) for name in before} == before
        assert run_started or after == before
        return lines[0]

    return run


def tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def train_args(tmp_path, *opts):
    return ["--cfg", DIGITS, f"LOG.PREFIX={tmp_path / 'out'}", "EXPERIMENT.NAME=r", "DATASET.IMAGE_SIZE=8", *opts]


def student_file(tmp_path, model="resnet8", name="student_best"):
    path = tmp_path / name
    save_checkpoint({"model": cifar_model_dict[model][0](num_classes=10).state_dict(), "epoch": 1}, str(path))
    return path


def test_missing_config_file(cli, tmp_path):
    line = cli(TRAIN, "--cfg", "configs/nope.yaml", f"LOG.PREFIX={tmp_path}")
    assert "Config file not found: configs/nope.yaml" in line


def test_unknown_model_lists_known(cli, tmp_path):
    line = cli(TRAIN, *train_args(tmp_path, "DISTILLER.STUDENT=resnet9"), run_started=True)
    assert "model 'resnet9' for dataset 'digits'" in line and "resnet8, " in line and "wrn_16_2" in line


# A timm teacher too small to cost anything at the 8 px of train_args: 2 px patches, a 4x4 grid, one block.
TINY_VIT = "timm:vit_tiny_patch16_224"
TINY_VIT_KWARGS = {"patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2}
TIMM_TEACHER = ["DISTILLER.TYPE=KD", f"DISTILLER.TEACHER={TINY_VIT}",
                *[f"MODEL.TEACHER_KWARGS.{k}={v}" for k, v in TINY_VIT_KWARGS.items()]]


def test_unknown_timm_name_suggests_timms_own(cli, tmp_path):
    line = cli(TRAIN, *train_args(tmp_path, "DISTILLER.TYPE=KD", "DISTILLER.TEACHER=timm:vit_tiny_patch16_22"),
               run_started=True)
    assert "Unknown model 'timm:vit_tiny_patch16_22'" in line and "Did you mean timm:vit_tiny_patch16_224" in line


def test_timm_teacher_with_a_classifier_of_another_size_is_refused_with_the_fix(cli, tmp_path):
    from mdistiller.models.external import build_external_model

    weights = tmp_path / "vit_1000.pth"
    torch.save(build_external_model(TINY_VIT, 1000, 8, TINY_VIT_KWARGS).model.state_dict(), weights)
    line = cli(TRAIN, *train_args(tmp_path, *TIMM_TEACHER, f"DISTILLER.TEACHER_WEIGHTS={weights}"), run_started=True)
    assert "classifier has 1000 outputs, the dataset 10 classes" in line and "Fine-tune" in line


def test_timm_pretrained_offline_names_the_file_and_where_to_place_it(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "no_cache"  # an empty cache: what the user's machine has cached plays no part
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    line = cli(TRAIN, *train_args(tmp_path, *TIMM_TEACHER, "DISTILLER.TEACHER_WEIGHTS=timm:pretrained"),
               run_started=True)
    assert "Cannot download timm weights for vit_tiny_patch16_224" in line and "offline?" in line
    assert "https://huggingface.co/timm/vit_tiny_patch16_224" in line and "(model.safetensors)" in line
    assert f"place the repository in {cache}" in line


def test_odd_batch_under_mixup_is_refused_with_the_fix(cli, tmp_path):
    line = cli(TRAIN, *train_args(tmp_path, "MIXUP.ALPHA=0.8", "SOLVER.BATCH_SIZE=7"), run_started=True)
    assert "SOLVER.BATCH_SIZE 7 is odd" in line


def test_unknown_dataset_lists_known(cli, tmp_path):
    line = cli(TRAIN, *train_args(tmp_path, "DATASET.TYPE=cifar1000", "DATASET.IMAGE_SIZE=0"))
    assert "Unknown dataset 'cifar1000'" in line and "Did you mean cifar100" in line
    assert "Known: cifar100, digits, imagenet, tiny_imagenet" in line


def test_output_dir_cannot_be_written(cli, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    line = cli(TRAIN, "--cfg", DIGITS, f"LOG.PREFIX={tmp_path / 'afile'}", "EXPERIMENT.NAME=r")
    assert f"Cannot write to output directory {tmp_path / 'afile'}/quickstart/r" in line and "LOG.PREFIX" in line


def test_resume_from_truncated_latest_overwrites_nothing(cli, tmp_path):
    run = tmp_path / "out" / "quickstart" / "r"
    run.mkdir(parents=True)
    student_file(run, name="latest")
    data = (run / "latest").read_bytes()
    (run / "latest").write_bytes(data[: len(data) // 3])
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 50.0}\n')
    (run / "cfg.yaml").write_text("kept: true\n")
    line = cli(TRAIN, *train_args(tmp_path), "--resume", str(run))
    assert f"Checkpoint {run / 'latest'} is truncated or corrupt" in line


def test_checkpoint_of_another_architecture_names_keys(cli, tmp_path):
    ckpt = student_file(tmp_path, model="wrn_16_2")
    line = cli(EVAL, "-m", "resnet8", "-c", str(ckpt), "-d", "digits")
    assert f"Checkpoint {ckpt} does not fit" in line and "another architecture" in line
    assert "missing layer1.0.conv1.weight" in line and "unexpected block1.layer.0.bn1.weight" in line


class Payload:
    """Unpickling this runs `open(marker, "w")`: code a checkpoint must never execute."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_carrying_code_is_refused_not_run(cli, tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "student_best"
    torch.save({"model": cifar_model_dict["resnet8"][0](num_classes=10).state_dict(), "x": Payload(str(marker))},
               evil, pickle_module=pickle)
    line = cli(EVAL, "-m", "resnet8", "-c", str(evil), "-d", "digits")
    assert f"Refused to load {evil}: it holds io.open" in line
    assert not marker.exists()
    line = cli(TRAIN, *train_args(tmp_path, "DISTILLER.TYPE=KD", f"DISTILLER.TEACHER_WEIGHTS={evil}"),
               run_started=True)
    assert "Refused to load" in line and not marker.exists()


def corrupt_images(folder: Path) -> Dict[str, Path]:
    """One file of garbage bytes and one JPEG cut in half, among the real images of `folder`."""
    images = sorted(folder.rglob("*.JPEG"))
    garbage, truncated = images[0], images[-1]
    garbage.write_bytes(b"this is no image")
    truncated.write_bytes(truncated.read_bytes()[:200])
    return {"garbage": garbage, "truncated": truncated}


@pytest.mark.slow
def test_unreadable_image_is_one_line_error_from_a_worker(cli, tmp_path):
    folder = write_fake_tiny_imagenet(tmp_path / "data", train_per_class=2)
    bad = corrupt_images(folder / "train")
    line = cli(TRAIN, *train_args(tmp_path, "DATASET.TYPE=tiny_imagenet", f"DATASET.ROOT={tmp_path / 'data'}",
                                  "DATASET.IMAGE_SIZE=64", "DISTILLER.STUDENT=ShuffleV2", "SOLVER.BATCH_SIZE=20",
                                  "DATASET.NUM_WORKERS=1"), run_started=True)
    assert "Cannot read image" in line and any(str(path) in line for path in bad.values())
    assert "DATASET.SKIP_UNREADABLE True" in line and "Traceback" not in line


@pytest.mark.slow
def test_unreadable_images_are_skipped_with_a_warning(tmp_path):
    folder = write_fake_tiny_imagenet(tmp_path / "data", train_per_class=2)
    bad = corrupt_images(folder / "train")
    cfg = build_cfg(DIGITS, ["DATASET.TYPE=tiny_imagenet", f"DATASET.ROOT={tmp_path / 'data'}", "DATASET.IMAGE_SIZE=64",
                             "DATASET.SKIP_UNREADABLE=True", "SOLVER.BATCH_SIZE=3"])
    train_set, val_set, _ = build_datasets(cfg)
    train_loader, _ = build_loaders(cfg, train_set, val_set)
    paths = [path for path, _ in train_set.dataset.samples]
    bad_indices = {paths.index(str(path)) for path in bad.values()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = [int(i) for _, target, index in train_loader for i in index]
    messages = [str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert sorted(seen) == sorted(set(range(len(paths))) - bad_indices)
    assert len(messages) == 2 and all(any(str(path) in m for m in messages) for path in bad.values())
    with Image.open(paths[min(set(range(len(paths))) - bad_indices)]) as image:
        assert image.size == (64, 64)  # the other files are untouched real images
