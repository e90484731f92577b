"""The configs of configs/{cifar100,imagenet,tiny_imagenet} through the real `train_run`, one short
epoch on tiny data in the real formats (CIFAR-100 pickles, ImageFolder trees), with random
teachers: checkpoint files for CIFAR / Tiny-ImageNet, torchvision hub files for ImageNet. Methods
with a stage 1 (the prompt methods' `prepare`) run it first, for one epoch. Files whose name starts
with `_` are the bases other files include (`_BASE_`), not runs.

The heterogeneous configs (cifar100/teachers/, cifar100/hetero/<pair>/<method>, imagenet/hetero/...)
run at 64 px with their timm models shrunk within the family where the constructor allows it
(HETERO_SHRUNK: fewer blocks, narrower; the patch size and strides kept, so the pair's maps align as
at 224). Their weights are random models' state dicts in the real formats, where the configs look:
`timm:pretrained` in huggingface_hub's cache (tests/fake_hub.py; ImageNet-sized heads for the
teachers to fine-tune, the dataset's classes for ImageNet teachers), a CIFAR teacher at the relative
path the teacher configs write (`output/cifar100_teachers/<name>/student_best`, the run starting in
a temporary directory).

Short form (default): one config per (dataset, method) plus every CIFAR-100 pair once, chosen by
rotation over the files found; of the heterogeneous files, one per kind of directory by rotation,
among those whose models all shrink (hetero_short_selection). Full form (MDISTILLER_E2E=full): every
file.
"""

import glob
import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from conftest import REPO_ROOT
from fake_data import IMAGENET_WNIDS, write_fake_cifar100, write_fake_imagenet, write_fake_tiny_imagenet
from fake_hub import offline_hub, place_timm_weights
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.distillers import distiller_dict
from mdistiller.engine.build import build_model, build_role_model
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.run import train_run
from mdistiller.models import imagenet_model_dict
from mdistiller.models.imagenet import resnet as imagenet_resnet
from mdistiller.models.external import TIMM_PREFIX
from mdistiller.models.imagenet._weights import torchvision_weights_path
from mdistiller.models.pretrained import TIMM_PRETRAINED

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

CONFIG_ROOT = os.path.join(REPO_ROOT, "configs")
DATASETS = ("cifar100", "imagenet", "tiny_imagenet")
NUM_CLASSES = {"cifar100": 100, "tiny_imagenet": 3}   # the fake Tiny-ImageNet has 3 class folders
BATCH = {"cifar100": 4, "imagenet": 2, "tiny_imagenet": 2}   # divides the train set: no batch of one
TORCHVISION_WEIGHTS = {"ResNet34": "ResNet34_Weights", "ResNet50": "ResNet50_Weights"}


HETERO_DIRS = ("teachers", "hetero")   # cifar100/teachers/<teacher>, {cifar100,imagenet}/hetero/<pair>/<method>
HETERO_SIZE = 64
# Constructor arguments that shrink a timm model within its family, keeping its patch size and
# strides. Mixer-B/16 and ResMLP-S12 (their entry points fix every size), RegNetY-16GF and MobileNetV2
# run at full width.
SMALL_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 3}
HETERO_SHRUNK = {
    "swin_tiny_patch4_window7_224": {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2),
                                     "window_size": 2},
    "vit_small_patch16_224": SMALL_VIT,
    "deit_tiny_patch16_224": SMALL_VIT,
    "deit_tiny_distilled_patch16_224": SMALL_VIT,
    "deit_small_distilled_patch16_224": SMALL_VIT,
    "convnext_tiny": {"dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1)},
    "resnet18": {"channels": (16, 32, 64, 128)},
    "resnet50": {"channels": (16, 32, 64, 128)},
}
# In a file's path: a model HETERO_SHRUNK cannot shrink and too slow for the short form (60 to 84M
# parameters, or 15M with AdamW and EMA state written each epoch).
FULL_SIZE_MODELS = ("mixer_b16", "resmlp_s12", "regnety160")


def all_configs() -> List[str]:
    return sorted(p for d in DATASETS for p in glob.glob(os.path.join(CONFIG_ROOT, d, "**", "*.yaml"), recursive=True)
                  if not os.path.basename(p).startswith("_"))


def method_of(path: str) -> str:
    """cifar100/<method>/<pair>.yaml, cifar100/<method>.yaml, imagenet/<pair>/<method>.yaml,
    tiny_imagenet/<method>/<pair>.yaml, {cifar100,imagenet}/hetero/<pair>/<method>.yaml;
    cifar100/teachers/<teacher>.yaml gives "teachers"."""
    parts = os.path.relpath(path, CONFIG_ROOT)[: -len(".yaml")].split(os.sep)
    if parts[0] == "imagenet" or len(parts) == 2 or parts[1] == "hetero":
        return parts[-1]
    return parts[1]


def is_hetero(path: str) -> bool:
    return os.path.relpath(path, CONFIG_ROOT).split(os.sep)[1] in HETERO_DIRS


def timm_bare_name(name: str) -> str:
    """``timm:convnext_tiny.fb_in1k`` -> ``convnext_tiny``."""
    return name[len(TIMM_PREFIX):].split(".")[0]


def is_cifar_pair_file(path: str) -> bool:
    """cifar100/<method>/<teacher>_<student>.yaml (vanilla/ and teachers/ hold single models, not pairs)."""
    parts = os.path.relpath(path, CONFIG_ROOT).split(os.sep)
    return len(parts) == 3 and parts[0] == "cifar100" and parts[1] not in ("vanilla", *HETERO_DIRS)


def hetero_short_selection(paths: List[str]) -> List[str]:
    """One heterogeneous file per kind of directory (cifar100/hetero, cifar100/teachers,
    imagenet/hetero) among those without FULL_SIZE_MODELS, spread by rotation: the middle of the
    i-th of n equal slices of the i-th directory's sorted files."""
    groups: Dict[tuple, List[str]] = defaultdict(list)
    for path in paths:
        rel = os.path.relpath(path, CONFIG_ROOT)
        if is_hetero(path) and not any(name in rel for name in FULL_SIZE_MODELS):
            groups[tuple(rel.split(os.sep)[:2])].append(path)
    n = len(groups)
    return [files[(2 * i + 1) * len(files) // (2 * n)] for i, (_, files) in enumerate(sorted(groups.items()))]


def short_selection(paths: List[str]) -> List[str]:
    hetero = hetero_short_selection(paths)
    paths = [p for p in paths if not is_hetero(p)]
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
    return sorted(set(chosen + hetero))


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


def hetero_overrides(cfg) -> List[str]:
    """HETERO_SIZE px and each timm model's HETERO_SHRUNK arguments, as command-line overrides."""
    opts = [f"DATASET.IMAGE_SIZE={HETERO_SIZE}"]
    for role in ("STUDENT", "TEACHER") if cfg.DISTILLER.TYPE != "NONE" else ("STUDENT",):
        shrunk = HETERO_SHRUNK.get(timm_bare_name(cfg.DISTILLER[role]), {})
        opts += [f"MODEL.{role}_KWARGS.{key}={value!r}" for key, value in shrunk.items()]
    return opts


def stand_in_hetero_weights(cfg, hub, num_classes: int) -> None:
    """Random weights of the (shrunk) models where `cfg` looks for them: timm:pretrained in `hub`
    (an ImageNet head on a model to fine-tune), a fine-tuned CIFAR teacher at its relative path."""
    torch.manual_seed(0)
    if cfg.DISTILLER.STUDENT_WEIGHTS == TIMM_PRETRAINED:
        student = build_role_model(cfg, "STUDENT", 1000)
        place_timm_weights(hub, cfg.DISTILLER.STUDENT[len(TIMM_PREFIX):], student.model.state_dict())
    if cfg.DISTILLER.TYPE == "NONE":
        return
    teacher = with_calibrated_batchnorm(build_role_model(cfg, "TEACHER", num_classes), HETERO_SIZE).eval()
    if cfg.DISTILLER.TEACHER_WEIGHTS == TIMM_PRETRAINED:
        place_timm_weights(hub, cfg.DISTILLER.TEACHER[len(TIMM_PREFIX):], teacher.model.state_dict())
    else:
        path = Path(cfg.DISTILLER.TEACHER_WEIGHTS)
        assert not path.is_absolute(), "the pair reads the checkpoint its teacher config writes"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": teacher.state_dict()}, path)


@pytest.fixture
def work_dir(tmp_path):
    """The directory a heterogeneous run starts in, holding its stand-in weights (Mixer-B's 240 MB,
    RegNetY-16GF's 330 MB), deleted when the test ends."""
    path = tmp_path / "work"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def log_prefix(tmp_path):
    """The run's LOG.PREFIX, deleted when the test ends: the checkpoints of one run reach 1.9 GB
    (FAM-KD's spectral weights with their momentum), the whole short selection 20 GB."""
    prefix = tmp_path / "log"
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: os.path.relpath(p, CONFIG_ROOT))
def test_config_trains_one_epoch(path, data_root, log_prefix, work_dir, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(data_root / "torch_home"))
    cfg = build_cfg(path)
    dataset, method = cfg.DATASET.TYPE, cfg.DISTILLER.TYPE
    opts = [f"DATASET.ROOT={data_root}", f"LOG.PREFIX={log_prefix}", "EXPERIMENT.NAME=run", "SOLVER.EPOCHS=1",
            f"SOLVER.BATCH_SIZE={BATCH[dataset]}", "DATASET.NUM_WORKERS=0", "DATASET.TEST.BATCH_SIZE=4",
            "LOG.PROGRESS_BAR=False", "LOG.WANDB=False"]
    if is_hetero(path):
        monkeypatch.chdir(work_dir)   # relative paths (a CIFAR pair's teacher) resolve in the test's directory
        opts += hetero_overrides(cfg)
        hub = offline_hub(monkeypatch, work_dir / "hub")
        num_classes = NUM_CLASSES.get(dataset, len(IMAGENET_WNIDS))
        stand_in_hetero_weights(build_cfg(path, opts), hub, num_classes)
    elif method != "NONE":
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
    zoo = [p for p in paths if not is_hetero(p)]
    assert {(os.path.relpath(p, CONFIG_ROOT).split(os.sep)[0], method_of(p)) for p in chosen if p in zoo} == \
           {(os.path.relpath(p, CONFIG_ROOT).split(os.sep)[0], method_of(p)) for p in zoo}
    hetero = [os.path.relpath(p, CONFIG_ROOT).split(os.sep) for p in chosen if is_hetero(p)]
    assert sorted(parts[:2] for parts in hetero) == [["cifar100", "hetero"], ["cifar100", "teachers"],
                                                    ["imagenet", "hetero"]]
    assert not any(name in part for parts in hetero for part in parts for name in FULL_SIZE_MODELS)
    pairs = {os.path.basename(p) for p in paths if is_cifar_pair_file(p)}
    assert len(pairs) >= 11 and pairs <= {os.path.basename(p) for p in chosen if is_cifar_pair_file(p)}
    assert len(chosen) < len(paths)
