"""torchvision detectors and segmenters on ResNet / ResNeXt backbones, and teacher weights.

Names: ``<kind>_<backbone>_fpn`` for the detectors ``fcos``, ``retinanet``, ``fasterrcnn``
(ResNet-FPN built as torchvision's ``*_resnet50_fpn`` builders do, so parameter names equal
torchvision's and its COCO weights load) and ``reppoints`` (mdistiller_dense/reppoints.py: the FPN
with GroupNorm, P6 / P7 from C5), and ``<kind>_<backbone>`` for the segmenters ``fcn``,
``deeplabv3`` (output stride 8: the last two stages dilated 2 and 4, also for the BasicBlock depths
18 / 34 as in mmsegmentation's ResNetV1c-18 recipes) and ``pspnet`` (mdistiller_dense/pspnet.py).
Backbones: ``resnet{18,34,50,101}``, ``resnext101_32x4d``, ``resnext101_64x4d``
(mdistiller_dense.backbones), deformable in ``MODEL.DCN_STAGES`` / ``MODEL.TEACHER_DCN_STAGES``,
with mmsegmentation's deep stem under ``MODEL.DEEP_STEM``.

Weights are given as a string: ``""`` (random init), a checkpoint file path (a plain state dict,
a dict whose ``"model"`` entry is one: mdistiller's own files, or an mmdetection / mmsegmentation
checkpoint ``{"state_dict": ..., "meta": ...}``, converted by mdistiller_dense.convert), or
``torchvision:<Enum>.<NAME>`` (e.g. ``torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1``) through
torchvision's weights API, which needs the network the first time (then torch hub's cache).
"""

import difflib
import os
from typing import Optional, Sequence, Tuple, Union

from torch import nn
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
from mdistiller_dense import pspnet, reppoints
from mdistiller_dense.convert import convert_mm_state_dict, is_mm_checkpoint
from mdistiller_dense.backbones import (BACKBONES, TORCHVISION, backbone_of, build_resnet_backbone, is_bottleneck,
                                        resnet_weights)

__all__ = ["DETECTORS", "SEGMENTERS", "BACKBONES", "HEAD_LAYOUTS", "parse_model_name", "task_of", "build_detector",
           "build_segmenter", "build_dense_model", "load_model_weights", "resnet_weights"]

DETECTORS = ("fcos", "retinanet", "fasterrcnn", "reppoints")
SEGMENTERS = ("fcn", "deeplabv3", "pspnet")
HEAD_LAYOUTS = ("torchvision", "mmseg")
FPN_EXTRA = ("output", "input")


def _known_names() -> Tuple[str, ...]:
    return tuple([f"{k}_{b}_fpn" for k in DETECTORS for b in BACKBONES] + [f"{k}_{b}" for k in SEGMENTERS for b in BACKBONES])


def parse_model_name(name: str) -> Tuple[str, str]:
    """``("fcos", "resnext101_64x4d")`` for ``fcos_resnext101_64x4d_fpn``; UnknownNameError for any other name."""
    if name not in _known_names():
        close = difflib.get_close_matches(name, _known_names(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"Unknown dense model '{name}'.{hint} Known: {{{','.join(DETECTORS)}}}_<backbone>_fpn and "
            f"{{{','.join(SEGMENTERS)}}}_<backbone>, <backbone> one of {', '.join(BACKBONES)}.")
    kind, backbone = name.split("_", 1)
    return kind, backbone[:-len("_fpn")] if backbone.endswith("_fpn") else backbone


def task_of(name: str) -> str:
    """``"detection"`` or ``"segmentation"``."""
    return "detection" if parse_model_name(name)[0] in DETECTORS else "segmentation"


def load_model_weights(model: nn.Module, spec: str, what: str) -> None:
    """Load ``spec`` (file path or ``torchvision:...``) into ``model``, strictly.

    ``num_batches_tracked`` entries are ignored where the model has FrozenBatchNorm2d (teachers,
    pretrained backbones), so a checkpoint of a model trained with BatchNorm2d loads into it. An
    mmdetection / mmsegmentation checkpoint is converted first (mdistiller_dense.convert).
    """
    if not spec:
        raise CheckpointError(f"{what}: no weights given; set a checkpoint path or torchvision:<Enum>.<NAME>.")
    if spec.startswith(TORCHVISION):
        weights = torchvision_state_dict(spec)
    else:
        if not os.path.isfile(spec):
            raise CheckpointError(f"{what}: weights file {spec} not found; train it first (tools/train_dense.py) "
                                  "or give torchvision:<Enum>.<NAME> when online.")
        state = load_checkpoint(spec)
        weights = convert_mm_state_dict(state, model) if is_mm_checkpoint(state) else student_state_dict(state)
    own = model.state_dict()
    weights = {k: v for k, v in weights.items() if k in own or not k.endswith("num_batches_tracked")}
    load_weights(model, weights, f"{what} {spec}")
    if spec == TORCHVISION + "RetinaNet_ResNet50_FPN_Weights.COCO_V1":
        from torchvision.models.detection._utils import overwrite_eps

        overwrite_eps(model, 0.0)  # as torchvision's builder does for these weights


def _resnet(backbone: Union[int, str], frozen_bn: bool, backbone_weights: str, dcn_stages: Sequence[int] = (),
            deep_stem: bool = False, **kwargs) -> nn.Module:
    """The backbone (a name of BACKBONES, or a ResNet depth) with BatchNorm2d or FrozenBatchNorm2d."""
    norm = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    return build_resnet_backbone(backbone_of(backbone), norm, backbone_weights, dcn_stages, deep_stem, **kwargs)


def build_detector(name: str, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   backbone_weights: str = "", trainable_layers: int = 3, frozen_bn: Optional[bool] = None,
                   dcn_stages: Sequence[int] = (), deep_stem: bool = False, fpn_extra: str = "output",
                   **kwargs) -> nn.Module:
    """A torchvision FCOS / RetinaNet / Faster R-CNN or a RepPoints on a ResNet / ResNeXt FPN, as torchvision's builders.

    ``num_classes`` counts the background (label 0), as torchvision's COCO models (91). With backbone
    weights (or ``frozen_bn``) BatchNorm is frozen and only ``trainable_layers`` stages train
    (torchvision's recipe); from scratch every layer trains with ordinary BatchNorm. ``fpn_extra``
    (FCOS / RetinaNet): P6 from P5 (``"output"``: torchvision's v1 models, mmdetection's FCOS) or
    from C5 (``"input"``: mmdetection's RetinaNet, torchvision's v2 models); RepPoints always from C5.
    """
    kind, backbone_name = parse_model_name(name)
    if kind not in DETECTORS:
        raise UnknownNameError(f"'{name}' is a segmenter, not a detector.")
    if fpn_extra not in FPN_EXTRA:
        raise ConfigError(f"MODEL.FPN_EXTRA '{fpn_extra}': one of {', '.join(FPN_EXTRA)}.")
    frozen = bool(backbone_weights) if frozen_bn is None else frozen_bn
    backbone = _resnet(backbone_name, frozen, backbone_weights, dcn_stages, deep_stem)
    layers = trainable_layers if backbone_weights else 5
    c5 = backbone.inplanes  # channels of layer4's output
    if kind == "fasterrcnn":
        fpn = _resnet_fpn_extractor(backbone, layers)
        model = FasterRCNN(fpn, num_classes, min_size=min_size, max_size=max_size, **kwargs)
    elif kind == "reppoints":
        fpn = _resnet_fpn_extractor(backbone, layers, returned_layers=[2, 3, 4],
                                    extra_blocks=reppoints.LastLevelP6P7GN(c5, 256), norm_layer=reppoints.group_norm)
        model = reppoints.RepPoints(fpn, num_classes, min_size=min_size, max_size=max_size, **kwargs)
    else:
        extra = LastLevelP6P7(256 if fpn_extra == "output" else c5, 256)
        fpn = _resnet_fpn_extractor(backbone, layers, returned_layers=[2, 3, 4], extra_blocks=extra)
        cls = FCOS if kind == "fcos" else RetinaNet
        model = cls(fpn, num_classes, min_size=min_size, max_size=max_size, **kwargs)
    if deep_stem and layers == 5:  # torchvision's freezing knows conv1 / bn1, not the deep stem
        fpn.body.stem.requires_grad_(True)
    return model


def _dilate_basic_blocks(layer: nn.Sequential, dilation: int) -> None:
    """Stride 1 and ``dilation`` in every 3x3 conv of a BasicBlock stage (torchvision's BasicBlock refuses it)."""
    for block in layer:
        for conv in (block.conv1, block.conv2):
            conv.stride, conv.dilation, conv.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def build_segmenter(name: str, num_classes: int, backbone_weights: str = "", aux_loss: bool = False,
                    dcn_stages: Sequence[int] = (), deep_stem: bool = False,
                    head_layout: str = "torchvision") -> nn.Module:
    """torchvision FCN / DeepLabV3 or PSPNet on a dilated ResNet / ResNeXt (output stride 8).

    ``head_layout`` ``"mmseg"`` gives FCN / DeepLabV3 mmsegmentation's heads (mdistiller_dense/pspnet.py)
    in place of torchvision's; PSPNet always has mmsegmentation's.
    """
    kind, backbone_name = parse_model_name(name)
    if kind not in SEGMENTERS:
        raise UnknownNameError(f"'{name}' is a detector, not a segmenter.")
    if head_layout not in HEAD_LAYOUTS:
        raise ConfigError(f"MODEL.SEG_HEAD_LAYOUT '{head_layout}' is unknown; use one of {', '.join(HEAD_LAYOUTS)}.")
    bottleneck = is_bottleneck(backbone_name)
    kwargs = {"replace_stride_with_dilation": [False, True, True]} if bottleneck else {}
    backbone = _resnet(backbone_name, False, backbone_weights, dcn_stages, deep_stem, **kwargs)
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
                      frozen_bn: Optional[bool] = None, teacher: bool = False) -> nn.Module:
    """The detector or segmenter ``name`` with the MODEL section's settings (``teacher``: the
    teacher's deformable stages, MODEL.TEACHER_DCN_STAGES, in place of MODEL.DCN_STAGES)."""
    dcn_stages = model_cfg.TEACHER_DCN_STAGES if teacher else model_cfg.DCN_STAGES
    if task_of(name) == "detection":
        return build_detector(name, num_classes, model_cfg.MIN_SIZE, model_cfg.MAX_SIZE, backbone_weights,
                              model_cfg.TRAINABLE_BACKBONE_LAYERS, frozen_bn, dcn_stages, model_cfg.DEEP_STEM,
                              model_cfg.FPN_EXTRA, detections_per_img=model_cfg.DETECTIONS_PER_IMAGE)
    return build_segmenter(name, num_classes, backbone_weights, model_cfg.AUX_LOSS, dcn_stages, model_cfg.DEEP_STEM,
                           model_cfg.SEG_HEAD_LAYOUT)
