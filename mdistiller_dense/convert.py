"""mmdetection / mmsegmentation checkpoints onto the dense models here.

An mmdetection or mmsegmentation checkpoint is ``{"state_dict": ..., "meta": ...}`` (mmcv's
``save_checkpoint``) with parameter names ``backbone.*``, ``neck.*``, ``bbox_head.*``,
``rpn_head.*``, ``roi_head.*``, ``decode_head.*``, ``auxiliary_head.*``.
:func:`convert_mm_state_dict` maps every tensor onto a parameter or buffer of the model built here
(rules per head family, below), checks its shape, and returns the model's full state dict; a
tensor without a place, a wrong shape, or one of the model's tensors left unfilled is a one-line
CheckpointError naming the first such key.

Rules (``<bb>`` = ``backbone.body.`` in detectors, ``backbone.`` in segmenters):
- backbone: ``backbone.X`` -> ``<bb>X``: torchvision's ResNet / ResNeXt names are mmdetection's
  (``conv1``, ``bn1``, ``layerN.i.convK`` / ``bnK`` / ``downsample.0|1``, DCN
  ``layerN.i.conv2.conv_offset``, deep stem ``stem.0|1|3|4|6|7``).
- FPN: ``neck.lateral_convs.i.conv|gn`` -> ``backbone.fpn.inner_blocks.i.0|1``,
  ``neck.fpn_convs.i`` -> ``backbone.fpn.layer_blocks.i.0|1`` for the pyramid levels, then the
  extra convs ``extra_blocks.p6`` / ``p7`` (``.weight`` for torchvision's LastLevelP6P7, ``.0|1``
  for a conv + GroupNorm block).
- RetinaNet: ``bbox_head.cls_convs.i.conv|gn`` -> ``head.classification_head.conv.i.0|1`` (reg
  likewise), ``retina_cls`` -> ``cls_logits`` with a background slot added per anchor,
  ``retina_reg`` -> ``regression_head.bbox_reg``.
- FCOS: ``bbox_head.cls_convs.i.conv|gn`` -> ``head.classification_head.conv.(3i)|(3i+1)``,
  the convs' missing biases (mmdetection's GN heads have none) set to 0 (exactly a conv without
  bias), ``conv_cls`` -> ``cls_logits`` (+ background slot), ``conv_reg`` -> ``bbox_reg``,
  ``conv_centerness`` -> ``regression_head.bbox_ctrness``; ``scales.i.scale`` must be 1
  (torchvision's FCOS has no per-level scale).
- Faster R-CNN: ``rpn_head.rpn_conv|rpn_cls|rpn_reg`` -> ``rpn.head.conv.0.0|cls_logits|bbox_pred``,
  ``roi_head.bbox_head.shared_fcs.0|1`` -> ``roi_heads.box_head.fc6|fc7``, ``fc_cls`` ->
  ``box_predictor.cls_score`` (mmdetection's background is the last row, torchvision's the first),
  ``fc_reg`` -> ``bbox_pred`` (class-specific deltas; four zero rows for the background).
- RepPoints: ``bbox_head.X`` -> ``head.X`` (mdistiller_dense/reppoints.py keeps mmdetection's names),
  ``reppoints_cls_out`` + background slot.
- Segmenters: ``decode_head.X`` -> ``classifier.X``, ``auxiliary_head.X`` -> ``aux_classifier.X``
  (mmsegmentation-layout heads), or onto torchvision's FCNHead (``convs.0.conv`` -> ``0``,
  ``convs.0.bn`` -> ``1``, ``conv_seg`` -> ``4``), which is mmsegmentation's FCNHead with
  ``num_convs=1, concat_input=False`` (its auxiliary head). mmsegmentation's decode FCNHead
  (two convs, concat_input) and ASPPHead have no counterpart in torchvision's FCN / DeepLabV3 heads.

Classes: mmdetection's sigmoid heads have K outputs (COCO: 80, no background); the detectors here
have ``num_classes = K + 1`` with label 0 the background (mdistiller_dense/data/coco.py gives the
K COCO categories in id order labels 1..K, the order of mmdetection's CLASSES). The background
slot of a sigmoid classifier gets weight 0 and bias ``-log((1 - 0.01) / 0.01)`` (torchvision's
prior-probability init: score 0.01, under the 0.05 score threshold). Where outputs may still
differ from mmdetection's: docs/dense_models.md.
"""

import math
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from mdistiller.errors import CheckpointError

__all__ = ["MM_PREFIXES", "is_mm_checkpoint", "mm_state_dict", "mm_family", "num_classes_of",
           "convert_mm_state_dict"]

MM_PREFIXES = ("backbone.", "neck.", "bbox_head.", "rpn_head.", "roi_head.", "decode_head.", "auxiliary_head.")
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)
# family -> a source key only that family's checkpoints hold
FAMILIES = {
    "retinanet": "bbox_head.retina_cls.weight",
    "fcos": "bbox_head.conv_centerness.weight",
    "fcos_v2.0": "bbox_head.fcos_centerness.weight",  # mmdetection <= 2.3 named its FCOS layers fcos_*
    "fasterrcnn": "rpn_head.rpn_conv.weight",
    "reppoints": "bbox_head.reppoints_cls_out.weight",
    "segmenter": "decode_head.conv_seg.weight",
}
CLASS_LAYERS = {  # family -> the source classifier (sigmoid, K outputs per anchor)
    "retinanet": "bbox_head.retina_cls.weight",
    "fcos": "bbox_head.conv_cls.weight",
    "fcos_v2.0": "bbox_head.fcos_cls.weight",
    "reppoints": "bbox_head.reppoints_cls_out.weight",
    "fasterrcnn": "roi_head.bbox_head.fc_cls.weight",
    "segmenter": "decode_head.conv_seg.weight",
}

Transform = Callable[[Tensor], Tensor]


def is_mm_checkpoint(state: Mapping) -> bool:
    """True for an mmdetection / mmsegmentation file: a ``state_dict`` entry (besides ``meta``,
    ``optimizer``) whose keys carry the mm prefixes, and no mdistiller ``model`` entry."""
    weights = state.get("state_dict")
    return "model" not in state and isinstance(weights, Mapping) and any(
        k.startswith(MM_PREFIXES) for k in mm_state_dict(weights))


def mm_state_dict(state: Mapping) -> Dict[str, Tensor]:
    """The tensors of a checkpoint or state dict, without a DataParallel ``module.`` prefix."""
    weights = state["state_dict"] if isinstance(state.get("state_dict"), Mapping) else state
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}


def mm_family(source: Mapping[str, Tensor]) -> str:
    """``retinanet``, ``fcos``, ``fasterrcnn``, ``reppoints`` or ``segmenter``, from the head's keys."""
    for family, key in FAMILIES.items():
        if key in source:
            return family.split("_")[0]
    raise CheckpointError("Not a RetinaNet / FCOS / Faster R-CNN / RepPoints (mmdetection) or segmenter "
                          f"(mmsegmentation) checkpoint: none of {', '.join(FAMILIES.values())} in it.")


def num_classes_of(source: Mapping[str, Tensor]) -> int:
    """The ``num_classes`` of the model here that takes ``source``: K + 1 for mmdetection's K classes
    (background included), the classes of ``conv_seg`` for a segmenter."""
    family = mm_family(source)
    rows = next(source[k] for f, k in CLASS_LAYERS.items() if f.startswith(family) and k in source).shape[0]
    if family == "retinanet":
        rows //= source["bbox_head.retina_reg.weight"].shape[0] // 4  # per anchor
    elif family == "fasterrcnn":
        rows -= 1  # its background row
    return rows if family == "segmenter" else rows + 1


def _with_background(anchors: int) -> Transform:
    """Sigmoid classifier rows ``(A * K, ...)`` -> ``(A * (K + 1), ...)``: a background row first per anchor."""
    def add(value: Tensor) -> Tensor:
        rows = value.reshape(anchors, -1, *value.shape[1:])
        fill = torch.full_like(rows[:, :1], PRIOR_BIAS) if value.dim() == 1 else torch.zeros_like(rows[:, :1])
        return torch.cat([fill, rows], 1).reshape(-1, *value.shape[1:])
    return add


def _background_first(value: Tensor) -> Tensor:
    """Softmax classifier rows: mmdetection's background (last) -> torchvision's (first)."""
    return torch.cat([value[-1:], value[:-1]])


def _zero_background_deltas(value: Tensor) -> Tensor:
    """Class-specific box deltas ``(4K, ...)`` -> ``(4(K + 1), ...)``: zeros for the background (unused)."""
    return torch.cat([torch.zeros_like(value[:4]), value])


def _fpn_rule(key: str, own: Mapping[str, Tensor]) -> Optional[List[str]]:
    """Targets of a ``neck.*`` key in a torchvision FPN (``backbone.fpn``)."""
    match = re.fullmatch(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.(conv|gn|bn)\.(\w+)", key)
    if match is None:
        return None
    kind, index, layer, leaf = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    slot = "0" if layer == "conv" else "1"
    if kind == "lateral_convs":
        return [f"backbone.fpn.inner_blocks.{index}.{slot}.{leaf}"]
    levels = sum(1 for k in own if re.fullmatch(r"backbone\.fpn\.inner_blocks\.\d+\.0\.weight", k))
    if index < levels:
        return [f"backbone.fpn.layer_blocks.{index}.{slot}.{leaf}"]
    extra = f"backbone.fpn.extra_blocks.p{index - levels + 6}"
    return [f"{extra}.{slot}.{leaf}"] + ([f"{extra}.{leaf}"] if layer == "conv" else [])


def _head_rule(family: str, key: str, anchors: int,
               own: Mapping[str, Tensor]) -> Optional[Tuple[List[str], Optional[Transform]]]:
    """Targets (first existing wins) and value transform of a head key; None: no rule."""
    convs = re.fullmatch(r"bbox_head\.(cls|reg)_convs\.(\d+)\.(conv|gn)\.(\w+)", key)
    if family in ("retinanet", "fcos") and convs:
        branch = "classification_head" if convs.group(1) == "cls" else "regression_head"
        index, slot = int(convs.group(2)), 0 if convs.group(3) == "conv" else 1
        place = f"{3 * index + slot}" if family == "fcos" else f"{index}.{slot}"
        return [f"head.{branch}.conv.{place}.{convs.group(4)}"], None
    leaf = key.rsplit(".", 1)[-1]
    direct = {
        "retinanet": {"bbox_head.retina_cls": ("head.classification_head.cls_logits", _with_background(anchors)),
                      "bbox_head.retina_reg": ("head.regression_head.bbox_reg", None)},
        "fcos": {f"bbox_head.{name}_{layer}": (target, transform) for name in ("conv", "fcos")
                 for layer, target, transform in (("cls", "head.classification_head.cls_logits", _with_background(1)),
                                                  ("reg", "head.regression_head.bbox_reg", None),
                                                  ("centerness", "head.regression_head.bbox_ctrness", None))},
        "fasterrcnn": {"rpn_head.rpn_conv": ("rpn.head.conv.0.0", None),
                       "rpn_head.rpn_cls": ("rpn.head.cls_logits", None),
                       "rpn_head.rpn_reg": ("rpn.head.bbox_pred", None),
                       "roi_head.bbox_head.shared_fcs.0": ("roi_heads.box_head.fc6", None),
                       "roi_head.bbox_head.shared_fcs.1": ("roi_heads.box_head.fc7", None),
                       "roi_head.bbox_head.fc_cls": ("roi_heads.box_predictor.cls_score", _background_first),
                       "roi_head.bbox_head.fc_reg": ("roi_heads.box_predictor.bbox_pred", _zero_background_deltas)},
        "reppoints": {"bbox_head.reppoints_cls_out": ("head.reppoints_cls_out", _with_background(1))},
    }[family] if family != "segmenter" else {}
    module = key[: -len(leaf) - 1]
    if module in direct:
        target, transform = direct[module]
        return [f"{target}.{leaf}"], transform
    if family == "reppoints" and key.startswith("bbox_head."):
        return ["head." + key[len("bbox_head."):]], None
    for prefix, ours in (("decode_head.", "classifier."), ("auxiliary_head.", "aux_classifier.")):
        if family == "segmenter" and key.startswith(prefix):
            rest = key[len(prefix):]
            fcn = re.fullmatch(r"convs\.0\.conv\.weight|convs\.0\.bn\.(\w+)|conv_seg\.(\w+)", rest)
            names = [ours + rest]
            if fcn and f"{ours}1.running_mean" in own:  # torchvision's FCNHead: 0 conv, 1 BatchNorm, 2 ReLU,
                #                                           3 Dropout, 4 classifier conv (DeepLabHead: 1 is a conv)
                names.append(ours + ("0.weight" if fcn.group(0).startswith("convs.0.conv")
                                     else f"1.{fcn.group(1)}" if fcn.group(1) else f"4.{fcn.group(2)}"))
            return names, None
    return None


def _unit_scale(key: str, value: Tensor) -> None:
    """mmdetection FCOS's learned per-level scale: torchvision's FCOS has none, so only 1 has a place."""
    if not torch.all(value == 1):
        raise CheckpointError(f"{key} = {value.flatten()[0].item():.4g} has no place: torchvision's FCOS has no "
                              "per-level regression scale (only scales of 1 convert; see docs/dense_models.md).")


def convert_mm_state_dict(state: Mapping, model: nn.Module) -> Dict[str, Tensor]:
    """``model``'s full state dict filled from an mmdetection / mmsegmentation checkpoint ``state``
    (or its ``state_dict``), by the rules of this module; CheckpointError on the first tensor with
    no place, a shape that differs, or the first of the model's tensors left unfilled."""
    source = mm_state_dict(state)
    family = mm_family(source)
    own = model.state_dict()
    what = type(model).__name__
    detector = any(k.startswith("backbone.body.") for k in own)
    if (family == "segmenter") == detector:
        raise CheckpointError(f"A {family} checkpoint does not fit the {what} here; "
                              "convert it onto a model of the same kind (retinanet, fcos, ...).")
    body = "backbone.body." if detector else "backbone."
    anchors = own["head.regression_head.bbox_reg.weight"].shape[0] // 4 if family == "retinanet" else 1
    placed: Dict[str, Tensor] = {}
    homeless: List[str] = []
    for key, value in source.items():
        if family == "fcos" and re.fullmatch(r"bbox_head\.scales\.\d+\.scale", key):
            _unit_scale(key, value)
            continue
        if key.startswith("backbone."):
            names, transform = [body + key[len("backbone."):]], None
        elif key.startswith("neck."):
            names, transform = _fpn_rule(key, own), None
        else:
            rule = _head_rule(family, key, anchors, own)
            names, transform = rule if rule else (None, None)
        target = next((n for n in names or () if n in own), None)
        if target is None:
            if not key.endswith("num_batches_tracked"):  # frozen BatchNorm keeps no count
                homeless.append(key)
            continue
        tensor = transform(value) if transform else value
        if tensor.shape != own[target].shape:
            raise CheckpointError(f"{key} {tuple(value.shape)} does not fit {target} {tuple(own[target].shape)} "
                                  f"of the {what} here: check the model name, MODEL settings and num_classes.")
        placed[target] = tensor.to(own[target].dtype)
    if family == "fcos":  # mmdetection's GN head convs have no bias: 0 is the same conv
        for name in own:
            if re.fullmatch(r"head\.\w+_head\.conv\.\d+\.bias", name) and name not in placed \
                    and name.replace(".bias", ".weight") in placed and own[name.replace(".bias", ".weight")].dim() == 4:
                placed[name] = torch.zeros_like(own[name])
    unfilled = [k for k in own if k not in placed and not k.endswith("num_batches_tracked")]
    if homeless or unfilled:
        parts = [f"{homeless[0]} has no place in the {what} here ({len(homeless)} such keys)" if homeless else "",
                 f"{unfilled[0]} of ours gets no tensor ({len(unfilled)} unfilled)" if unfilled else ""]
        hint = (" Set MODEL.AUX_LOSS True for its auxiliary head." if homeless and homeless[0].startswith(
            "auxiliary_head.") and not any(k.startswith("aux_classifier.") for k in own) else "")
        raise CheckpointError(f"mmdetection / mmsegmentation checkpoint: {'; '.join(p for p in parts if p)}.{hint} "
                              "See docs/dense_models.md for the heads that convert.")
    for name in own:
        if name not in placed:  # num_batches_tracked of BatchNorm2d
            placed[name] = own[name]
    return placed
