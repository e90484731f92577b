"""Model zoo. `cifar_model_dict` / `tiny_imagenet_model_dict` / `imagenet_model_dict` as MDistiller.

Each CIFAR / Tiny-ImageNet entry is `name -> (constructor(num_classes=...), teacher checkpoint path
or None)`; each ImageNet entry is `name -> constructor(pretrained=...)`.
"""

from mdistiller.models.cifar import cifar_model_dict, tiny_imagenet_model_dict
from mdistiller.models.imagenet import imagenet_model_dict

__all__ = ["cifar_model_dict", "tiny_imagenet_model_dict", "imagenet_model_dict"]
