"""torchvision detectors and segmenters on ResNet backbones of any depth, and teacher weights.

Names: ``fcos_resnet{18,34,50,101}_fpn``, ``retinanet_resnet..._fpn``, ``fasterrcnn_resnet..._fpn``
(ResNet-FPN built as torchvision's ``*_resnet50_fpn`` builders do, so parameter names equal
torchvision's and its COCO weights load), ``fcn_resnet...`` and ``deeplabv3_resnet...`` (output
stride 8: the last two stages dilated 2 and 4, also for the BasicBlock depths 18 / 34 as in
mmsegmentation's ResNetV1c-18 recipes), ``pspnet_resnet...`` (mdistiller_dense/pspnet.py).

Weights are given as a string: ``""`` (random init), a checkpoint file path (a plain state dict,
or a dict whose ``"model"`` entry is one: mdistiller's own files), or ``torchvision:<Enum>.<NAME>``
(e.g. ``torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1``) through torchvision's weights API, which
needs the network the first time (then torch hub's cache).
"""

import os
import re
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead

from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError, UnknownNameError
from mdistiller.models.pretrained import torchvision_state_dict
from mdistiller_dense import pspnet

__all__ = ["DETECTORS", "SEGMENTERS", "HEAD_LAYOUTS", "DEPTHS", "parse_model_name", "task_of", "build_detector", "build_segmenter",
           "build_dense_model", "load_model_weights", "resnet_weights"]

DETECTORS = ("fcos", "retinanet", "fasterrcnn")
SEGMENTERS = ("fcn", "deeplabv3", "pspnet")
HEAD_LAYOUTS = ("torchvision", "mmseg")
DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
NAME = re.compile(r"^(?P<kind>[a-z0-9]+)_resnet(?P<depth>\d+)(?P<fpn>_fpn)?$")
TORCHVISION = "torchvision:"


def parse_model_name(name: str) -> Tuple[str, int]:
    """``("fcos", 50)`` for ``fcos_resnet50_fpn``; UnknownNameError for any other pattern."""
    match = NAME.match(name)
    kind = match and match.group("kind")
    ok = match is not None and int(match.group("depth")) in DEPTHS and (
        (kind in DETECTORS and match.group("fpn")) or (kind in SEGMENTERS and not match.group("fpn")))
    if not ok:
        depths = "/".join(str(d) for d in DEPTHS)
        raise UnknownNameError(
            f"Unknown dense model '{name}'. Known: {{{','.join(DETECTORS)}}}_resnet{{{depths}}}_fpn and "
            f"{{{','.join(SEGMENTERS)}}}_resnet{{{depths}}}.")
    return kind, int(match.group("depth"))


def task_of(name: str) -> str:
    """``"detection"`` or ``"segmentation"``."""
    return "detection" if parse_model_name(name)[0] in DETECTORS else "segmentation"


def resnet_weights(spec: str) -> Optional[Dict[str, torch.Tensor]]:
    """ImageNet weights for a ResNet backbone from ``spec`` (empty: none)."""
    if not spec:
        return None
    if spec.startswith(TORCHVISION):
        return torchvision_state_dict(spec)
    return student_state_dict(load_checkpoint(spec))


def load_model_weights(model: nn.Module, spec: str, what: str) -> None:
    """Load ``spec`` (file path or ``torchvision:...``) into ``model``, strictly.

    ``num_batches_tracked`` entries are ignored where the model has FrozenBatchNorm2d (teachers,
    pretrained backbones), so a checkpoint of a model trained with BatchNorm2d loads into it.
    """
    if not spec:
        raise CheckpointError(f"{what}: no weights given; set a checkpoint path or torchvision:<Enum>.<NAME>.")
    if spec.startswith(TORCHVISION):
        weights = torchvision_state_dict(spec)
    else:
        if not os.path.isfile(spec):
            raise CheckpointError(f"{what}: weights file {spec} not found; train it first (tools/train_dense.py) "
                                  "or give torchvision:<Enum>.<NAME> when online.")
        weights = student_state_dict(load_checkpoint(spec))
    own = model.state_dict()
    weights = {k: v for k, v in weights.items() if k in own or not k.endswith("num_batches_tracked")}
    load_weights(model, weights, f"{what} {spec}")
    if spec == TORCHVISION + "RetinaNet_ResNet50_FPN_Weights.COCO_V1":
        from torchvision.models.detection._utils import overwrite_eps

        overwrite_eps(model, 0.0)  # as torchvision's builder does for these weights


def _resnet(depth: int, frozen_bn: bool, backbone_weights: str, **kwargs) -> resnet.ResNet:
    norm = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    model = DEPTHS[depth](weights=None, norm_layer=norm, **kwargs)
    state = resnet_weights(backbone_weights)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise CheckpointError(f"Backbone weights {backbone_weights} do not fit resnet{depth} "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return model


def build_detector(name: str, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   backbone_weights: str = "", trainable_layers: int = 3, frozen_bn: Optional[bool] = None,
                   **kwargs) -> nn.Module:
    """A torchvision FCOS / RetinaNet / Faster R-CNN on ResNet-``depth``-FPN, as torchvision's builders.

    ``num_classes`` counts the background (label 0), as torchvision's COCO models (91). With backbone
    weights (or ``frozen_bn``) BatchNorm is frozen and only ``trainable_layers`` stages train
    (torchvision's recipe); from scratch every layer trains with ordinary BatchNorm.
    """
    kind, depth = parse_model_name(name)
    if kind not in DETECTORS:
        raise UnknownNameError(f"'{name}' is a segmenter, not a detector.")
    frozen = bool(backbone_weights) if frozen_bn is None else frozen_bn
    backbone = _resnet(depth, frozen, backbone_weights)
    layers = trainable_layers if backbone_weights else 5
    if kind == "fasterrcnn":
        fpn = _resnet_fpn_extractor(backbone, layers)
        return FasterRCNN(fpn, num_classes, min_size=min_size, max_size=max_size, **kwargs)
    fpn = _resnet_fpn_extractor(backbone, layers, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    cls = FCOS if kind == "fcos" else RetinaNet
    return cls(fpn, num_classes, min_size=min_size, max_size=max_size, **kwargs)


def _dilate_basic_blocks(layer: nn.Sequential, dilation: int) -> None:
    """Stride 1 and ``dilation`` in every 3x3 conv of a BasicBlock stage (torchvision's BasicBlock refuses it)."""
    for block in layer:
        for conv in (block.conv1, block.conv2):
            conv.stride, conv.dilation, conv.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def build_segmenter(name: str, num_classes: int, backbone_weights: str = "", aux_loss: bool = False,
                    head_layout: str = "torchvision") -> nn.Module:
    """torchvision FCN / DeepLabV3 or PSPNet on a dilated ResNet-``depth`` (output stride 8).

    ``head_layout`` ``"mmseg"`` gives FCN / DeepLabV3 mmsegmentation's heads (mdistiller_dense/pspnet.py)
    in place of torchvision's; PSPNet always has mmsegmentation's.
    """
    kind, depth = parse_model_name(name)
    if kind not in SEGMENTERS:
        raise UnknownNameError(f"'{name}' is a detector, not a segmenter.")
    if head_layout not in HEAD_LAYOUTS:
        raise ConfigError(f"MODEL.SEG_HEAD_LAYOUT '{head_layout}' is unknown; use one of {', '.join(HEAD_LAYOUTS)}.")
    bottleneck = depth >= 50
    kwargs = {"replace_stride_with_dilation": [False, True, True]} if bottleneck else {}
    backbone = _resnet(depth, False, backbone_weights, **kwargs)
    if not bottleneck:
        _dilate_basic_blocks(backbone.layer3, 2)
        _dilate_basic_blocks(backbone.layer4, 4)
    channels = 2048 if bottleneck else 512
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    body = IntermediateLayerGetter(backbone, return_layers=return_layers)
    if kind == "pspnet" or head_layout == "mmseg":
        width, aux_width = pspnet.decode_channels(bottleneck)
        aux = pspnet.FCNHead(channels // 2, aux_width, num_classes, num_convs=1, concat_input=False) if aux_loss else None
        if kind == "pspnet":
            return pspnet.PSPNet(body, pspnet.PSPHead(channels, width, num_classes), aux)
        head = pspnet.FCNHead(channels, width, num_classes) if kind == "fcn" else pspnet.ASPPHead(channels, width, num_classes)
        return (FCN if kind == "fcn" else DeepLabV3)(body, head, aux)
    aux = FCNHead(channels // 2, num_classes) if aux_loss else None
    if kind == "fcn":
        return FCN(body, FCNHead(channels, num_classes), aux)
    return DeepLabV3(body, DeepLabHead(channels, num_classes), aux)


def build_dense_model(name: str, num_classes: int, model_cfg, backbone_weights: str = "",
                      frozen_bn: Optional[bool] = None) -> nn.Module:
    """The detector or segmenter ``name`` with the MODEL section's settings."""
    if task_of(name) == "detection":
        return build_detector(name, num_classes, model_cfg.MIN_SIZE, model_cfg.MAX_SIZE, backbone_weights,
                              model_cfg.TRAINABLE_BACKBONE_LAYERS, frozen_bn,
                              detections_per_img=model_cfg.DETECTIONS_PER_IMAGE)
    return build_segmenter(name, num_classes, backbone_weights, model_cfg.AUX_LOSS, model_cfg.SEG_HEAD_LAYOUT)
