"""Tiny-ImageNet-200 (64x64) as two ImageFolder trees under ``<DATASET.ROOT>/tiny-imagenet-200``.

Layout, as MDistiller: ``train/<wnid>/images/*.JPEG`` (the download's own layout; ImageFolder looks
into sub-folders) and ``val/<wnid>/*.JPEG``. The download ships its validation images flat
(``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``); :func:`reorganize_val` sorts them
into class folders once. Training: ``RandomRotation(20)``, ``RandomHorizontalFlip(0.5)``,
``ToTensor``, ``Normalize``; validation: ``ToTensor``, ``Normalize`` (MDistiller's mean / std).
``DATASET.RAND_AUGMENT`` (resampling with ``DATASET.INTERPOLATION``) and ``DATASET.RANDOM_ERASING``
add the transformer recipe (:mod:`mdistiller.dataset.augment`).
"""

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from torchvision import transforms
from yacs.config import CfgNode

from mdistiller.dataset.augment import train_transform

from mdistiller.dataset.base import (
    InstanceDataset,
    dataset_registry,
    dataset_root,
    load_image_folder_pair,
)
from mdistiller.errors import DatasetNotFoundError

__all__ = [
    "TINY_IMAGENET_MEAN",
    "TINY_IMAGENET_STD",
    "build_tiny_imagenet",
    "reorganize_val",
    "tiny_imagenet_train_transform",
    "tiny_imagenet_val_transform",
]

TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)


def tiny_imagenet_train_transform(cfg: Optional[CfgNode] = None) -> transforms.Compose:
    """MDistiller's Tiny-ImageNet training augmentation (64 px), with `cfg`'s recipe keys."""
    geometric = [transforms.RandomRotation(20), transforms.RandomHorizontalFlip(0.5)]
    return train_transform(geometric, cfg, 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)


def tiny_imagenet_val_transform() -> transforms.Compose:
    """MDistiller's Tiny-ImageNet evaluation transform (no augmentation)."""
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)]
    )


def _has_raw_val_layout(val_dir: Path) -> bool:
    return (val_dir / "val_annotations.txt").is_file() and (val_dir / "images").is_dir()


def reorganize_val(folder: Union[str, Path]) -> int:
    """Move ``<folder>/val/images/*.JPEG`` into ``<folder>/val/<wnid>/`` as listed in
    ``val_annotations.txt``.

    ``folder`` is the ``tiny-imagenet-200`` directory. Returns the number of images moved; the
    emptied ``val/images`` directory is removed, the annotation file kept.
    """
    val_dir = Path(folder) / "val"
    if not _has_raw_val_layout(val_dir):
        raise DatasetNotFoundError(
            f"No raw Tiny-ImageNet validation set at {val_dir}: expected "
            f"{val_dir}/images/*.JPEG and {val_dir}/val_annotations.txt"
        )
    moved = 0
    with open(val_dir / "val_annotations.txt") as annotations:
        for line in annotations:
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            filename, wnid = fields[0], fields[1]
            source = val_dir / "images" / filename
            if source.is_file():
                (val_dir / wnid).mkdir(exist_ok=True)
                shutil.move(os.fspath(source), os.fspath(val_dir / wnid / filename))
                moved += 1
    if not any((val_dir / "images").iterdir()):
        (val_dir / "images").rmdir()
    return moved


@dataset_registry.register("tiny_imagenet")
def build_tiny_imagenet(cfg: CfgNode):
    """``(train_set, val_set, num_classes)`` from ``<ROOT>/tiny-imagenet-200/{train,val}``."""
    folder = dataset_root(cfg) / "tiny-imagenet-200"
    val_dir = folder / "val"
    if _has_raw_val_layout(val_dir):
        raise DatasetNotFoundError(
            f"Tiny-ImageNet validation images at {val_dir}/images are not sorted into class "
            f"folders: run once python -c \"from mdistiller.dataset.tiny_imagenet import "
            f"reorganize_val; reorganize_val('{folder}')\""
        )
    layout = (
        f"{folder}/train/<wnid>/images/*.JPEG and {folder}/val/<wnid>/*.JPEG (see data/README.md)"
    )
    train_set, val_set = load_image_folder_pair(
        "Tiny-ImageNet",
        folder / "train",
        val_dir,
        tiny_imagenet_train_transform(cfg),
        tiny_imagenet_val_transform(),
        layout,
        skip_unreadable=bool(cfg.DATASET.get("SKIP_UNREADABLE", False)),
    )
    return InstanceDataset(train_set), val_set, len(train_set.classes)
