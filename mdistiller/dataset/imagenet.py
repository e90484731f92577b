"""ImageNet (ILSVRC-2012) as two ImageFolder trees under ``<DATASET.ROOT>/imagenet``.

Layout, as MDistiller: ``imagenet/train/<wnid>/*.JPEG`` and ``imagenet/val/<wnid>/*.JPEG`` (the
validation images sorted into one folder per class). Training: ``RandomResizedCrop(224)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``; validation: ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor``, ``Normalize``, with the usual ImageNet mean / std. At another
``DATASET.IMAGE_SIZE`` S the crops are S and the resize S * 256 / 224; ``DATASET.INTERPOLATION``,
``DATASET.RAND_AUGMENT`` and ``DATASET.RANDOM_ERASING`` add the transformer recipe
(:mod:`mdistiller.dataset.augment`).

``num_classes`` is the number of class folders (1000 for ImageNet; fewer for a subset). ImageNet
cannot be downloaded automatically; ``DATASET.DOWNLOAD`` is ignored.
"""

from typing import Optional

from torchvision import transforms
from yacs.config import CfgNode

from mdistiller.dataset.augment import interpolation_mode, train_transform

from mdistiller.dataset.base import (
    InstanceDataset,
    dataset_registry,
    dataset_root,
    image_size,
    load_image_folder_pair,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_imagenet",
    "imagenet_train_transform",
    "imagenet_val_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_train_transform(size: int = 224, cfg: Optional[CfgNode] = None) -> transforms.Compose:
    """MDistiller's ImageNet training augmentation at `size`, with `cfg`'s recipe keys."""
    interpolation = interpolation_mode(cfg)
    geometric = [transforms.RandomResizedCrop(size, interpolation=interpolation), transforms.RandomHorizontalFlip()]
    return train_transform(geometric, cfg, size, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_val_transform(size: int = 224, cfg: Optional[CfgNode] = None) -> transforms.Compose:
    """MDistiller's ImageNet evaluation transform: resize the short side to 256, centre 224 (at
    another `size`, in the same ratio)."""
    return transforms.Compose(
        [
            transforms.Resize(size * 256 // 224, interpolation=interpolation_mode(cfg)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@dataset_registry.register("imagenet")
def build_imagenet(cfg: CfgNode):
    """``(train_set, val_set, num_classes)`` from ``<ROOT>/imagenet/{train,val}``."""
    folder = dataset_root(cfg) / "imagenet"
    layout = (
        f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG "
        "(see data/README.md; ImageNet cannot be downloaded automatically)"
    )
    train_set, val_set = load_image_folder_pair(
        "ImageNet",
        folder / "train",
        folder / "val",
        imagenet_train_transform(image_size(cfg), cfg),
        imagenet_val_transform(image_size(cfg), cfg),
        layout,
        skip_unreadable=bool(cfg.DATASET.get("SKIP_UNREADABLE", False)),
    )
    return InstanceDataset(train_set), val_set, len(train_set.classes)
