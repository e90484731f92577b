"""ImageNet architectures, registered where they are defined by their MDistiller names.

``imagenet_model_dict[name](pretrained=...)`` builds a model, as in MDistiller; an unknown name
raises :class:`~mdistiller.errors.UnknownNameError` listing the known ones.
"""

from mdistiller.models.imagenet.mobilenetv1 import MobileNetV1, mobilenet_v1
from mdistiller.models.imagenet.resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from mdistiller.models.registry import imagenet_models

__all__ = [
    "imagenet_model_dict",
    "MobileNetV1",
    "ResNet",
    "mobilenet_v1",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

imagenet_model_dict = imagenet_models  # a Registry: name -> constructor(pretrained=...)
