"""mmdetection / mmsegmentation state dicts with random values, their key names and shapes written
from those libraries' module definitions (not from mdistiller_dense.convert):

- ``mmdet/models/backbones/resnet.py`` / ``resnext.py``: ``conv1`` / ``bn1`` (or mmseg's deep
  ``stem.0|1|3|4|6|7``), ``layerN.i.conv1..3`` / ``bn1..3`` / ``downsample.0|1``; a DCN conv2 is
  mmcv's DeformConv2dPack: ``conv2.weight`` + ``conv2.conv_offset`` (2*3*3 outputs, bias).
- ``mmdet/models/necks/fpn.py``: ``lateral_convs.i.conv`` (+ ``.gn``), ``fpn_convs.i.conv``, the
  extra convs after the pyramid levels (on_input: the first reads C5).
- ``retina_head.py`` (``cls_convs.i.conv``, ``retina_cls`` A*K, ``retina_reg`` A*4),
  ``fcos_head.py`` / ``anchor_free_head.py`` (GN towers without conv bias, ``conv_cls``,
  ``conv_reg``, ``conv_centerness``, ``scales.i.scale``), ``rpn_head.py`` (``rpn_conv``, ``rpn_cls``
  A, ``rpn_reg`` 4A), ``convfc_bbox_head.py`` Shared2FCBBoxHead (``shared_fcs.0|1``, ``fc_cls`` K+1
  with the background last, ``fc_reg`` 4K).
- ``reppoints_head.py`` RepPointsHead(num_classes, 256, stacked_convs=3, num_points=9, norm_cfg GN):
  ``cls_convs.i`` / ``reg_convs.i`` ConvModules (``conv`` without bias, ``gn``),
  ``reppoints_cls_conv`` and ``reppoints_pts_refine_conv`` mmcv DeformConv (3x3, ``weight`` only),
  ``reppoints_cls_out`` (1x1, K), ``reppoints_pts_init_conv`` (3x3, bias), ``reppoints_pts_init_out`` /
  ``reppoints_pts_refine_out`` (1x1, 18), ``moment_transfer`` (2,).
- ``mmseg/models/decode_heads/decode_head.py`` + ``fcn_head.py`` (``conv_seg`` first, then
  ``convs.i.conv|bn``, ``conv_cat``), ``aspp_head.py`` (``image_pool.1``, ``aspp_modules.i``,
  ``bottleneck``).
"""

from typing import Dict, Sequence

import torch

Tensors = Dict[str, torch.Tensor]


def _conv(sd: Tensors, name: str, cout: int, cin: int, k: int, bias: bool, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.05
    if bias:
        sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.05


def _norm(sd: Tensors, name: str, channels: int, gen: torch.Generator, batch: bool = True) -> None:
    sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
    sd[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=gen)
    if batch:
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=gen)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=gen)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def mm_resnet(depth: int, groups: int = 1, base_width: int = 4, dcn_stages: Sequence[int] = (),
              deep_stem: bool = False, prefix: str = "backbone.", seed: int = 0) -> Tensors:
    """mmdetection's ResNet / ResNeXt (pytorch style) or mmsegmentation's ResNetV1c."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    if deep_stem:
        for index, (cout, cin) in zip((0, 3, 6), ((32, 3), (32, 32), (64, 32))):
            _conv(sd, f"stem.{index}", cout, cin, 3, False, gen)
            _norm(sd, f"stem.{index + 1}", cout, gen)
    else:
        _conv(sd, "conv1", 64, 3, 7, False, gen)
        _norm(sd, "bn1", 64, gen)
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    inplanes = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2 ** stage
        out = planes * (4 if bottleneck else 1)
        width = planes if groups == 1 else planes * base_width // 64 * groups
        for i in range(count):
            name = f"layer{stage + 1}.{i}"
            if bottleneck:
                _conv(sd, f"{name}.conv1", width, inplanes, 1, False, gen)
                _norm(sd, f"{name}.bn1", width, gen)
                _conv(sd, f"{name}.conv2", width, width // groups, 3, False, gen)
                if stage + 2 in dcn_stages:
                    _conv(sd, f"{name}.conv2.conv_offset", 18, width, 3, True, gen)
                _norm(sd, f"{name}.bn2", width, gen)
                _conv(sd, f"{name}.conv3", out, width, 1, False, gen)
                _norm(sd, f"{name}.bn3", out, gen)
            else:
                _conv(sd, f"{name}.conv1", planes, inplanes, 3, False, gen)
                _norm(sd, f"{name}.bn1", planes, gen)
                _conv(sd, f"{name}.conv2", planes, planes, 3, False, gen)
                _norm(sd, f"{name}.bn2", planes, gen)
            if i == 0 and (stage > 0 or inplanes != out):
                _conv(sd, f"{name}.downsample.0", out, inplanes, 1, False, gen)
                _norm(sd, f"{name}.downsample.1", out, gen)
            inplanes = out
    return {prefix + k: v for k, v in sd.items()}


def mm_fpn(in_channels: Sequence[int], start_level: int, num_outs: int, extra: str = "", gn: bool = False,
           seed: int = 1) -> Tensors:
    """mmdetection's FPN(out_channels=256, add_extra_convs=``extra``): convs for the levels past the
    backbone's where num_outs exceeds them ('on_input': the first reads C5); '' (False): max-pooled, no convs."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    levels = in_channels[start_level:]
    for i, channels in enumerate(levels):
        _conv(sd, f"neck.lateral_convs.{i}.conv", 256, channels, 1, not gn, gen)
        if gn:
            _norm(sd, f"neck.lateral_convs.{i}.gn", 256, gen, batch=False)
    for i in range(len(levels)):
        _conv(sd, f"neck.fpn_convs.{i}.conv", 256, 256, 3, not gn, gen)
        if gn:
            _norm(sd, f"neck.fpn_convs.{i}.gn", 256, gen, batch=False)
    for i in range(len(levels), num_outs if extra else 0):
        cin = in_channels[-1] if extra == "on_input" and i == len(levels) else 256
        _conv(sd, f"neck.fpn_convs.{i}.conv", 256, cin, 3, not gn, gen)
        if gn:
            _norm(sd, f"neck.fpn_convs.{i}.gn", 256, gen, batch=False)
    return sd


def mm_retina_head(num_classes: int, anchors: int = 9, seed: int = 2) -> Tensors:
    """RetinaHead(num_classes, 256, stacked_convs=4), no norm: the tower convs have biases."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    for i in range(4):
        _conv(sd, f"bbox_head.cls_convs.{i}.conv", 256, 256, 3, True, gen)
        _conv(sd, f"bbox_head.reg_convs.{i}.conv", 256, 256, 3, True, gen)
    _conv(sd, "bbox_head.retina_cls", anchors * num_classes, 256, 3, True, gen)
    _conv(sd, "bbox_head.retina_reg", anchors * 4, 256, 3, True, gen)
    return sd


def _gn_towers(stacked_convs: int, gen: torch.Generator) -> Tensors:
    """An anchor-free head's ``cls_convs`` / ``reg_convs``: ConvModule(256, 256, 3, GN(32)), no conv bias."""
    sd: Tensors = {}
    for i in range(stacked_convs):
        for branch in ("cls", "reg"):
            _conv(sd, f"bbox_head.{branch}_convs.{i}.conv", 256, 256, 3, False, gen)
            _norm(sd, f"bbox_head.{branch}_convs.{i}.gn", 256, gen, batch=False)
    return sd


def mm_fcos_head(num_classes: int, scales: Sequence[float] = (1.0,) * 5, seed: int = 3) -> Tensors:
    """FCOSHead(num_classes, 256, stacked_convs=4, norm_cfg GN(32)): tower convs without bias."""
    gen = torch.Generator().manual_seed(seed)
    sd = _gn_towers(4, gen)
    _conv(sd, "bbox_head.conv_cls", num_classes, 256, 3, True, gen)
    _conv(sd, "bbox_head.conv_reg", 4, 256, 3, True, gen)
    _conv(sd, "bbox_head.conv_centerness", 1, 256, 3, True, gen)
    for i, scale in enumerate(scales):
        sd[f"bbox_head.scales.{i}.scale"] = torch.tensor(float(scale))
    return sd


def mm_faster_rcnn_heads(num_classes: int, seed: int = 4) -> Tensors:
    """RPNHead(256, 256) with 3 anchors (sigmoid: one output each) and Shared2FCBBoxHead(roi 7, 1024)."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    _conv(sd, "rpn_head.rpn_conv", 256, 256, 3, True, gen)
    _conv(sd, "rpn_head.rpn_cls", 3, 256, 1, True, gen)
    _conv(sd, "rpn_head.rpn_reg", 12, 256, 1, True, gen)
    for name, shape in (("shared_fcs.0", (1024, 256 * 7 * 7)), ("shared_fcs.1", (1024, 1024)),
                        ("fc_cls", (num_classes + 1, 1024)), ("fc_reg", (4 * num_classes, 1024))):
        sd[f"roi_head.bbox_head.{name}.weight"] = torch.randn(*shape, generator=gen) * 0.01
        sd[f"roi_head.bbox_head.{name}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    return sd


def mm_reppoints_head(num_classes: int, seed: int = 7) -> Tensors:
    """RepPointsHead(num_classes, 256, feat_channels=256, point_feat_channels=256, stacked_convs=3,
    num_points=9, norm_cfg=dict(type='GN', num_groups=32), transform_method='moment')."""
    gen = torch.Generator().manual_seed(seed)
    sd = _gn_towers(3, gen)
    _conv(sd, "bbox_head.reppoints_cls_conv", 256, 256, 3, False, gen)
    _conv(sd, "bbox_head.reppoints_cls_out", num_classes, 256, 1, True, gen)
    _conv(sd, "bbox_head.reppoints_pts_init_conv", 256, 256, 3, True, gen)
    _conv(sd, "bbox_head.reppoints_pts_init_out", 18, 256, 1, True, gen)
    _conv(sd, "bbox_head.reppoints_pts_refine_conv", 256, 256, 3, False, gen)
    _conv(sd, "bbox_head.reppoints_pts_refine_out", 18, 256, 1, True, gen)
    sd["bbox_head.moment_transfer"] = 0.1 * torch.randn(2, generator=gen)
    return sd


def mm_fcn_head(prefix: str, in_channels: int, channels: int, num_classes: int, num_convs: int = 2,
                concat_input: bool = True, seed: int = 5) -> Tensors:
    """mmsegmentation's FCNHead (BN, kernel 3); ``conv_seg`` comes first (BaseDecodeHead's __init__)."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    _conv(sd, "conv_seg", num_classes, channels, 1, True, gen)
    for i in range(num_convs):
        _conv(sd, f"convs.{i}.conv", channels, in_channels if i == 0 else channels, 3, False, gen)
        _norm(sd, f"convs.{i}.bn", channels, gen)
    if concat_input:
        _conv(sd, "conv_cat.conv", channels, in_channels + channels, 3, False, gen)
        _norm(sd, "conv_cat.bn", channels, gen)
    return {prefix + k: v for k, v in sd.items()}


def mm_aspp_head(in_channels: int, channels: int, num_classes: int, seed: int = 6) -> Tensors:
    """mmsegmentation's ASPPHead(dilations (1, 12, 24, 36))."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    _conv(sd, "conv_seg", num_classes, channels, 1, True, gen)
    _conv(sd, "image_pool.1.conv", channels, in_channels, 1, False, gen)
    _norm(sd, "image_pool.1.bn", channels, gen)
    for i in range(4):
        _conv(sd, f"aspp_modules.{i}.conv", channels, in_channels, 1 if i == 0 else 3, False, gen)
        _norm(sd, f"aspp_modules.{i}.bn", channels, gen)
    _conv(sd, "bottleneck.conv", channels, 5 * channels, 3, False, gen)
    _norm(sd, "bottleneck.bn", channels, gen)
    return {"decode_head." + k: v for k, v in sd.items()}


def mm_file(state_dict: Tensors) -> dict:
    """An mmcv checkpoint: ``{"meta": ..., "state_dict": ...}`` (mmdetection 2.x layout)."""
    return {"meta": {"mmdet_version": "2.25.0", "CLASSES": tuple(f"c{i}" for i in range(80)),
                     "config": "model = dict(type='RetinaNet')"}, "state_dict": state_dict}
