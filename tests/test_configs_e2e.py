"""The configs of configs/{cifar100,imagenet,tiny_imagenet} through the real `train_run`, one short
epoch on tiny data in the real formats (CIFAR-100 pickles, ImageFolder trees), with random
teachers: checkpoint files for CIFAR / Tiny-ImageNet, torchvision hub files for ImageNet. Methods
with a stage 1 (the prompt methods' `prepare`) run it first, for one epoch.

Short form (default): one config per (dataset, method) plus every CIFAR-100 pair once, chosen by
rotation over the files found. Full form (MDISTILLER_E2E=full): every file.
"""

import glob
import json
import math
import os
import shutil
from collections import defaultdict
from typing import Dict, List

import pytest
import torch

from conftest import REPO_ROOT
from fake_data import write_fake_cifar100, write_fake_imagenet, write_fake_tiny_imagenet
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.distillers import distiller_dict
from mdistiller.engine.build import build_model
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.run import train_run
from mdistiller.models import imagenet_model_dict
from mdistiller.models.imagenet import resnet as imagenet_resnet
from mdistiller.models.imagenet._weights import torchvision_weights_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

CONFIG_ROOT = os.path.join(REPO_ROOT, "configs")
DATASETS = ("cifar100", "imagenet", "tiny_imagenet")
NUM_CLASSES = {"cifar100": 100, "tiny_imagenet": 3}   # the fake Tiny-ImageNet has 3 class folders
BATCH = {"cifar100": 4, "imagenet": 2, "tiny_imagenet": 2}   # divides the train set: no batch of one
TORCHVISION_WEIGHTS = {"ResNet34": "ResNet34_Weights", "ResNet50": "ResNet50_Weights"}


def all_configs() -> List[str]:
    return sorted(p for d in DATASETS for p in glob.glob(os.path.join(CONFIG_ROOT, d, "**", "*.yaml"), recursive=True))


def method_of(path: str) -> str:
    """cifar100/<method>/<pair>.yaml, cifar100/<method>.yaml, imagenet/<pair>/<method>.yaml,
    tiny_imagenet/<method>/<pair>.yaml."""
    parts = os.path.relpath(path, CONFIG_ROOT)[: -len(".yaml")].split(os.sep)
    if parts[0] == "imagenet" or len(parts) == 2:
        return parts[-1]
    return parts[1]


def is_cifar_pair_file(path: str) -> bool:
    """cifar100/<method>/<teacher>_<student>.yaml (vanilla/ holds single models, not pairs)."""
    parts = os.path.relpath(path, CONFIG_ROOT).split(os.sep)
    return len(parts) == 3 and parts[0] == "cifar100" and parts[1] != "vanilla"


def short_selection(paths: List[str]) -> List[str]:
    groups: Dict[tuple, List[str]] = defaultdict(list)
    for path in paths:
        groups[(os.path.relpath(path, CONFIG_ROOT).split(os.sep)[0], method_of(path))].append(path)
    chosen = [files[i % len(files)] for i, (_, files) in enumerate(sorted(groups.items()))]
    cifar_pair_files = [p for p in paths if is_cifar_pair_file(p)]
    by_pair: Dict[str, List[str]] = defaultdict(list)
    for path in cifar_pair_files:
        by_pair[os.path.basename(path)].append(path)
    covered = {os.path.basename(p) for p in chosen if p in cifar_pair_files}
    for i, (pair, files) in enumerate(sorted(by_pair.items())):
        if pair not in covered:
            chosen.append(files[i % len(files)])
    return sorted(set(chosen))


SELECTED = all_configs() if os.environ.get("MDISTILLER_E2E") == "full" else short_selection(all_configs())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar100(root, num_train=8, num_test=4)
    write_fake_imagenet(root, train_per_class=2, val_per_class=1)
    write_fake_tiny_imagenet(root, train_per_class=2, val_per_class=1)
    return root


IMAGE_SIZE = {"cifar100": 32, "tiny_imagenet": 64}


@torch.no_grad()
def with_calibrated_batchnorm(model: torch.nn.Module, image_size: int) -> torch.nn.Module:
    """`model` with BatchNorm running statistics measured on random images, as a trained teacher
    has them: fresh statistics (mean 0, var 1) make deep residual nets in eval mode (resnet110)
    grow their features by ~2x per block, to 1e16, and any feature loss overflows."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None   # cumulative average over the calibration batches
    model.train()
    for _ in range(2):
        model(torch.randn(8, 3, image_size, image_size))
    return model


def teacher_file(root, dataset: str, name: str) -> str:
    """A random teacher checkpoint of `name` for `dataset` (BatchNorm calibrated), written once."""
    path = root / "teachers" / f"{dataset}_{name}.pth"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        torch.manual_seed(0)
        model = with_calibrated_batchnorm(build_model(name, dataset, NUM_CLASSES[dataset]), IMAGE_SIZE[dataset])
        torch.save({"model": model.state_dict()}, path)
    return str(path)


def torchvision_teacher(name: str) -> None:
    """A random state dict where torchvision keeps `name`'s ImageNet weights (hub dir from TORCH_HOME)."""
    weights = getattr(imagenet_resnet, TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
    path = torchvision_weights_path(weights)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(imagenet_model_dict[name](pretrained=False).state_dict(), path)


@pytest.fixture
def log_prefix(tmp_path):
    """The run's LOG.PREFIX, deleted when the test ends: the checkpoints of one run reach 1.9 GB
    (FAM-KD's spectral weights with their momentum), the whole short selection 20 GB."""
    prefix = tmp_path / "log"
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: os.path.relpath(p, CONFIG_ROOT))
def test_config_trains_one_epoch(path, data_root, log_prefix, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(data_root / "torch_home"))
    cfg = build_cfg(path)
    dataset, method = cfg.DATASET.TYPE, cfg.DISTILLER.TYPE
    opts = [f"DATASET.ROOT={data_root}", f"LOG.PREFIX={log_prefix}", "EXPERIMENT.NAME=run", "SOLVER.EPOCHS=1",
            f"SOLVER.BATCH_SIZE={BATCH[dataset]}", "DATASET.NUM_WORKERS=0", "DATASET.TEST.BATCH_SIZE=4",
            "LOG.PROGRESS_BAR=False", "LOG.WANDB=False"]
    if method != "NONE":
        if dataset == "imagenet":
            torchvision_teacher(cfg.DISTILLER.TEACHER)
        else:
            opts.append(f"DISTILLER.TEACHER_WEIGHTS={teacher_file(data_root, dataset, cfg.DISTILLER.TEACHER)}")
    if method == "CRD":
        opts.append("CRD.NCE.K=16")
    if distiller_dict[method].stages:  # prompt methods: train_run runs stage 1 first
        opts.append(f"{method}.PROMPT_EPOCHS=1")
    run_cfg = build_cfg(path, opts)
    trainer = train_run(run_cfg, verbose=False)
    run = log_prefix / cfg.EXPERIMENT.PROJECT / "run"
    assert 0.0 <= trainer.best_acc <= 100.0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    losses = {k: v for k, v in record.items() if k.startswith("loss_")}
    assert record["epoch"] == 1 and losses and all(math.isfinite(v) and v >= 0 for v in losses.values())
    if method != "NONE":   # a distillation term beside cross-entropy (SFAKD's default trains on loss_feat alone)
        assert set(losses) - {"loss_ce"}
    assert (run / "student_best").is_file() and (run / "latest").is_file()


def test_short_selection_covers_every_method_and_pair():
    paths = all_configs()
    chosen = short_selection(paths)
    assert {(os.path.relpath(p, CONFIG_ROOT).split(os.sep)[0], method_of(p)) for p in chosen} == \
           {(os.path.relpath(p, CONFIG_ROOT).split(os.sep)[0], method_of(p)) for p in paths}
    pairs = {os.path.basename(p) for p in paths if is_cifar_pair_file(p)}
    assert len(pairs) >= 11 and pairs <= {os.path.basename(p) for p in chosen if is_cifar_pair_file(p)}
    assert len(chosen) < len(paths)
