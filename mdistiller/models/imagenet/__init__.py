"""ImageNet architectures, registered by their MDistiller names.

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
from mdistiller.registry import Registry

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

imagenet_model_dict = Registry("ImageNet model")
imagenet_model_dict.register("ResNet18", resnet18)
imagenet_model_dict.register("ResNet34", resnet34)
imagenet_model_dict.register("ResNet50", resnet50)
imagenet_model_dict.register("ResNet101", resnet101)
imagenet_model_dict.register("ResNet152", resnet152)
imagenet_model_dict.register("MobileNetV1", mobilenet_v1)
