"""ResNet / ResNeXt backbones of the dense models, with mmdetection's deformable stages and
mmsegmentation's deep stem.

- ResNeXt (Xie et al., CVPR 2017) is torchvision's ``resnet.ResNet`` with ``groups`` and
  ``width_per_group``: ``resnext101_32x4d`` (32 / 4) and ``resnext101_64x4d`` (64 / 4), the X101
  backbones of mmdetection's configs (``ResNeXt(depth=101, groups=32 | 64, base_width=4)``, pytorch
  style: stride on the 3x3 conv). The bottleneck width ``floor(planes * base_width / 64) * groups``
  is the same formula in both libraries.
- Deformable convolution (Dai et al., ICCV 2017; mmdetection's ``dconv_c3-c5``:
  ``dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False), stage_with_dcn=(False, True,
  True, True)``): in the stages listed (2..5 = c2..c5 = layer1..layer4) the 3x3 ``conv2`` of every
  bottleneck becomes :class:`DeformConv2d`, laid out as mmcv's ``DeformConv2dPack``.
- Deep stem (mmsegmentation's ResNetV1c, from Bag of Tricks, He et al., CVPR 2019): three 3x3
  convs 3 -> 32 (stride 2) -> 32 -> 64, each with BatchNorm and ReLU, as ``stem`` in place of
  ``conv1`` / ``bn1`` / ``relu``.

Parameter names are torchvision's and mmdetection's (``layer3.5.conv2.conv_offset.weight``,
``stem.0.weight``), so mdistiller_dense.convert maps mmdetection / mmsegmentation backbones by prefix.
"""

from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops import deform_conv2d

from mdistiller.engine.checkpoint import load_checkpoint, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.models.pretrained import torchvision_state_dict

__all__ = ["BACKBONES", "DeformConv2d", "ResNet", "backbone_of", "build_resnet_backbone", "is_bottleneck",
           "resnet_weights"]

TORCHVISION = "torchvision:"

# name -> (block, blocks per stage, groups, width per group)
BACKBONES: Dict[str, Tuple[Type[nn.Module], Tuple[int, int, int, int], int, int]] = {
    "resnet18": (resnet.BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (resnet.BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (resnet.Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (resnet.Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnext101_32x4d": (resnet.Bottleneck, (3, 4, 23, 3), 32, 4),
    "resnext101_64x4d": (resnet.Bottleneck, (3, 4, 23, 3), 64, 4),
}


def is_bottleneck(name: str) -> bool:
    """True for the Bottleneck backbones (ResNet-50 and deeper, every ResNeXt)."""
    return BACKBONES[name][0] is resnet.Bottleneck


class DeformConv2d(nn.Module):
    """A 3x3 deformable convolution that predicts its own offsets, as mmcv's ``DeformConv2dPack``.

    Dai et al., "Deformable Convolutional Networks" (ICCV 2017), eq. (2):
    ``y(p0) = sum_k w_k x(p0 + p_k + dp_k)``, with the offsets ``dp`` from ``conv_offset`` (a plain
    conv of the same kernel, stride, padding and dilation, ``2 * k * k`` outputs in torchvision's and
    mmcv's order ``[y0, x0, y1, x1, ...]``, zero-initialised, so at initialisation the layer is the
    ordinary conv). ``weight`` has no bias; ``groups`` as nn.Conv2d (ResNeXt's grouped 3x3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # torchvision ResNet's init
        self.conv_offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, stride, padding,
                                     dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def like(cls, conv: nn.Conv2d) -> "DeformConv2d":
        """The deformable counterpart of a square ``conv`` (same shapes, stride, padding, dilation, groups)."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                   conv.dilation[0], conv.groups)

    def forward(self, x: Tensor) -> Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, stride=self.stride, padding=self.padding,
                             dilation=self.dilation)


class ResNet(resnet.ResNet):
    """torchvision's ResNet, whose stem is ``stem`` (deep stem) where ``conv1`` is absent."""

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.stem(x) if "stem" in self._modules else self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _deep_stem(norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """mmsegmentation's ResNetV1c stem: conv3x3(3, 32, stride 2), conv3x3(32, 32), conv3x3(32, 64), each + norm + ReLU."""
    layers = []
    for cin, cout, stride in ((3, 32, 2), (32, 32, 1), (32, 64, 1)):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_layer(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _replace_stem(model: ResNet, stem: nn.Sequential) -> None:
    """``stem`` in place of ``conv1`` / ``bn1`` / ``relu``, first among the children (the order
    IntermediateLayerGetter runs them in)."""
    children = [(name, module) for name, module in model._modules.items() if name not in ("conv1", "bn1", "relu")]
    model._modules = OrderedDict([("stem", stem), *children])


def resnet_weights(spec: str) -> Optional[Dict[str, Tensor]]:
    """ImageNet weights for a backbone from ``spec``: ``""`` none, ``torchvision:<Enum>.<NAME>`` or a file."""
    if not spec:
        return None
    if spec.startswith(TORCHVISION):
        return torchvision_state_dict(spec)
    return student_state_dict(load_checkpoint(spec))


def _load_backbone_weights(model: nn.Module, name: str, spec: str) -> None:
    """``spec``'s weights into ``model``; the classifier ``fc`` and the offset convs may be absent
    (the offsets start at zero, as mmdetection's DCN backbones from ImageNet weights)."""
    state = {k: v for k, v in resnet_weights(spec).items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("fc.") or ".conv_offset." in k
                                          or k.endswith("num_batches_tracked"))]
    if missing or unexpected:
        raise CheckpointError(f"Backbone weights {spec} do not fit {name} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")


def build_resnet_backbone(name: str, norm_layer: Callable[[int], nn.Module], weights: str = "",
                          dcn_stages: Sequence[int] = (), deep_stem: bool = False,
                          replace_stride_with_dilation: Optional[Sequence[bool]] = None) -> resnet.ResNet:
    """The backbone ``name`` (a key of :data:`BACKBONES`), optionally deformable in ``dcn_stages``
    (2..5, mmdetection's c2..c5), with the deep stem, with ``weights`` loaded (see :func:`resnet_weights`).

    ``replace_stride_with_dilation`` as torchvision's ResNet (Bottleneck backbones only; the first
    block of a dilated stage keeps the previous dilation, as mmsegmentation's ``contract_dilation``).
    """
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone '{name}'; known: {', '.join(BACKBONES)}.")
    block, layers, groups, width = BACKBONES[name]
    stages = sorted(set(int(s) for s in dcn_stages))
    if any(s not in (2, 3, 4, 5) for s in stages):
        raise ConfigError(f"MODEL.DCN_STAGES {list(dcn_stages)}: stages are 2..5 (c2..c5 = layer1..layer4), "
                          "e.g. [3, 4, 5] for mmdetection's dconv_c3-c5.")
    if stages and block is not resnet.Bottleneck:
        raise ConfigError(f"MODEL.DCN_STAGES {stages} needs a Bottleneck backbone (resnet50 and deeper, resnext); "
                          f"{name} has BasicBlocks, which mmdetection does not make deformable either.")
    model = ResNet(block, list(layers), groups=groups, width_per_group=width, norm_layer=norm_layer,
                   replace_stride_with_dilation=replace_stride_with_dilation)
    for stage in stages:
        for bottleneck in getattr(model, f"layer{stage - 1}"):
            bottleneck.conv2 = DeformConv2d.like(bottleneck.conv2)
    if deep_stem:
        _replace_stem(model, _deep_stem(norm_layer))
    if weights:
        _load_backbone_weights(model, name, weights)
    return model


def backbone_of(depth_or_name: Union[int, str]) -> str:
    """``"resnet50"`` for ``50`` (the depth the dense models were named by before ResNeXt), a name as is."""
    return f"resnet{depth_or_name}" if isinstance(depth_or_name, int) else depth_or_name
