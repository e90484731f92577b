"""Model zoo. `cifar_model_dict` / `tiny_imagenet_model_dict` / `imagenet_model_dict` as MDistiller,
views of the registries every model registers in where it is defined (:mod:`mdistiller.models.registry`).

Each CIFAR / Tiny-ImageNet entry is `name -> (constructor(num_classes=...), teacher checkpoint path
or None)`; each ImageNet entry is `name -> constructor(pretrained=...)`.
"""

from mdistiller.models.cifar import cifar_model_dict, tiny_imagenet_model_dict
from mdistiller.models.imagenet import imagenet_model_dict
from mdistiller.models.registry import cifar_models, imagenet_models, models_for, tiny_imagenet_models

__all__ = ["cifar_model_dict", "cifar_models", "imagenet_model_dict", "imagenet_models", "models_for",
           "tiny_imagenet_model_dict", "tiny_imagenet_models"]
