"""CIFAR-100 and Tiny-ImageNet architectures, by MDistiller's names.

``cifar_model_dict`` / ``tiny_imagenet_model_dict`` map a name to ``(constructor, teacher
checkpoint path or None)`` exactly as MDistiller does; ``cifar_models`` / ``tiny_imagenet_models``
are the same constructors in :class:`~mdistiller.registry.Registry` form (an unknown name raises
an error listing the known ones). Every constructor takes ``num_classes`` (default 100).
"""

import os
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from mdistiller.models.checkpoint_dir import download_ckpts_dir
from mdistiller.registry import Registry

from .mobilenetv2 import mobile_half
from .mv2_tinyimagenet import mobilenetv2_tinyimagenet
from .resnet import (
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from .resnetv2 import ResNet18, ResNet34, ResNet50
from .shufflenetv1 import ShuffleV1
from .shufflenetv2 import ShuffleV2
from .vgg import vgg8_bn, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
from .wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "CIFAR_TEACHER_DIR",
    "TINY_IMAGENET_TEACHER_DIR",
    "cifar_model_dict",
    "cifar_models",
    "tiny_imagenet_model_dict",
    "tiny_imagenet_models",
]

ModelFn = Callable[..., nn.Module]

CIFAR_TEACHER_DIR = os.path.join(download_ckpts_dir(), "cifar_teachers")
TINY_IMAGENET_TEACHER_DIR = os.path.join(download_ckpts_dir(), "tiny_imagenet_teachers")


def _cifar_teacher(name: str) -> str:
    return os.path.join(CIFAR_TEACHER_DIR, f"{name}_vanilla", "ckpt_epoch_240.pth")


cifar_models = Registry("CIFAR model")
for _name, _fn in [
    ("resnet8", resnet8),
    ("resnet14", resnet14),
    ("resnet20", resnet20),
    ("resnet32", resnet32),
    ("resnet44", resnet44),
    ("resnet56", resnet56),
    ("resnet110", resnet110),
    ("resnet8x4", resnet8x4),
    ("resnet32x4", resnet32x4),
    ("ResNet18", ResNet18),
    ("ResNet34", ResNet34),
    ("ResNet50", ResNet50),
    ("wrn_16_1", wrn_16_1),
    ("wrn_16_2", wrn_16_2),
    ("wrn_40_1", wrn_40_1),
    ("wrn_40_2", wrn_40_2),
    ("vgg8", vgg8_bn),
    ("vgg11", vgg11_bn),
    ("vgg13", vgg13_bn),
    ("vgg16", vgg16_bn),
    ("vgg19", vgg19_bn),
    ("MobileNetV2", mobile_half),
    ("ShuffleV1", ShuffleV1),
    ("ShuffleV2", ShuffleV2),
]:
    cifar_models.register(_name, _fn)

# The CIFAR-100 teachers MDistiller ships (download_ckpts/cifar_teachers/<name>_vanilla/).
CIFAR_TEACHERS = ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")

cifar_model_dict: Dict[str, Tuple[ModelFn, Optional[str]]] = {
    name: (fn, _cifar_teacher(name) if name in CIFAR_TEACHERS else None) for name, fn in cifar_models.items()
}

tiny_imagenet_models = Registry("Tiny-ImageNet model")
tiny_imagenet_models.register("ResNet18", ResNet18)
tiny_imagenet_models.register("MobileNetV2", mobilenetv2_tinyimagenet)
tiny_imagenet_models.register("ShuffleV2", ShuffleV2)

tiny_imagenet_model_dict: Dict[str, Tuple[ModelFn, Optional[str]]] = {
    "ResNet18": (ResNet18, os.path.join(TINY_IMAGENET_TEACHER_DIR, "ResNet18_vanilla", "ti_res18")),
    "MobileNetV2": (mobilenetv2_tinyimagenet, None),
    "ShuffleV2": (ShuffleV2, None),
}

del _name, _fn
