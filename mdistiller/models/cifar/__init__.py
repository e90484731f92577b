"""CIFAR-100 and Tiny-ImageNet architectures, by MDistiller's names.

Each module registers its constructors where they are defined, in
:data:`~mdistiller.models.registry.cifar_models` / ``tiny_imagenet_models`` (an unknown name raises an
error listing the known ones and the closest). ``cifar_model_dict`` / ``tiny_imagenet_model_dict``
map a name to ``(constructor, teacher checkpoint path or None)`` exactly as MDistiller does, as
views of those registries. Every constructor takes ``num_classes`` (default 100).
"""

import os

from mdistiller.models.checkpoint_dir import download_ckpts_dir
from mdistiller.models.registry import ModelDict, cifar_models, tiny_imagenet_models

from . import mobilenetv2, mv2_tinyimagenet, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401  (register)

__all__ = [
    "CIFAR_TEACHER_DIR",
    "TINY_IMAGENET_TEACHER_DIR",
    "cifar_model_dict",
    "cifar_models",
    "tiny_imagenet_model_dict",
    "tiny_imagenet_models",
]

CIFAR_TEACHER_DIR = os.path.join(download_ckpts_dir(), "cifar_teachers")
TINY_IMAGENET_TEACHER_DIR = os.path.join(download_ckpts_dir(), "tiny_imagenet_teachers")

cifar_model_dict = ModelDict(cifar_models)
tiny_imagenet_model_dict = ModelDict(tiny_imagenet_models)
