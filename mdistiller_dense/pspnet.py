"""PSPNet and mmsegmentation-layout decode heads, in torchvision's segmentation-model style.

PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017) as mmsegmentation's
``pspnet_r{18,50,101}-d8`` runs it: a dilated ResNet (output stride 8), the pyramid pooling module
on stage 4 (adaptive average pooling to 1x1, 2x2, 3x3 and 6x6 bins, a 1x1 conv-BN-ReLU per bin,
bilinear upsampling back with ``align_corners=False``, concatenation with the input map), a 3x3
bottleneck, dropout 0.1 and the 1x1 classifier ``conv_seg``; the auxiliary FCN head on stage 3
(its loss weighted by MODEL.AUX_WEIGHT, mmsegmentation's 0.4).

The heads' module names are mmsegmentation's without the ``decode_head.`` / ``auxiliary_head.``
prefix (a conv-norm-ReLU block holds ``conv`` and ``bn``), so an mmsegmentation checkpoint maps onto
``classifier.`` / ``aux_classifier.`` by rule. :class:`FCNHead` and :class:`ASPPHead` are
mmsegmentation's FCN (``num_convs`` 3x3 convs, the input concatenated before ``conv_cat``) and
DeepLabV3 ASPP head (image pooling, a 1x1 and three dilated 3x3 branches, a 3x3 bottleneck), which
``MODEL.SEG_HEAD_LAYOUT mmseg`` puts on ``fcn_*`` / ``deeplabv3_*`` in place of torchvision's heads.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation._utils import _SimpleSegmentationModel

__all__ = ["ConvBNReLU", "PyramidPooling", "PSPHead", "FCNHead", "ASPPHead", "PSPNet", "decode_channels"]

PSP_BINS = (1, 2, 3, 6)
ASPP_DILATIONS = (1, 12, 24, 36)


def decode_channels(bottleneck: bool) -> Sequence[int]:
    """(decode head, auxiliary head) widths of mmsegmentation's ``-d8`` recipes: 512 / 256 on the
    Bottleneck ResNets (R50 / R101), 128 / 64 on the BasicBlock ones (its R18 configs; R34 alike)."""
    return (512, 256) if bottleneck else (128, 64)


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with BatchNorm: ``conv`` (no bias), ``bn``, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        padding = 0 if kernel_size == 1 else dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class _DecodeHead(nn.Module):
    """mmsegmentation's ``DecodeHead.cls_seg``: dropout, then the 1x1 classifier ``conv_seg``."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def cls_seg(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(x))


class PyramidPooling(nn.ModuleList):
    """PSPNet's pyramid pooling (Zhao et al. 2017, Sec. 3.2): per bin size ``b`` an adaptive average
    pool to b x b and a 1x1 conv-BN-ReLU (``<i>.0`` / ``<i>.1``), each upsampled bilinearly
    (``align_corners=False``) to the input's size; :meth:`forward` returns the list of them."""

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = PSP_BINS) -> None:
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, channels, 1)) for b in bins)

    def forward(self, x: Tensor):
        return [F.interpolate(branch(x), size=x.shape[-2:], mode="bilinear", align_corners=False) for branch in self]


class PSPHead(_DecodeHead):
    """mmsegmentation's ``PSPHead``: [x, pyramid pooling of x] concatenated, a 3x3 ``bottleneck``,
    ``cls_seg``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, bins: Sequence[int] = PSP_BINS,
                 dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        self.psp_modules = PyramidPooling(in_channels, channels, bins)
        self.bottleneck = ConvBNReLU(in_channels + len(bins) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_seg(self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1)))


class FCNHead(_DecodeHead):
    """mmsegmentation's ``FCNHead`` (Long et al., CVPR 2015): ``num_convs`` 3x3 conv-BN-ReLU
    (``convs.<i>``), with ``concat_input`` the input concatenated to their output and fused by
    ``conv_cat`` (3x3), then ``cls_seg``. mmsegmentation's FCN decode head: 2 convs, concat on;
    its auxiliary head: 1 conv, concat off."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 2,
                 concat_input: bool = True, dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*(ConvBNReLU(a, b, 3) for a, b in zip(widths, widths[1:])))
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3) if concat_input else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


class ASPPHead(_DecodeHead):
    """mmsegmentation's DeepLabV3 ``ASPPHead`` (Chen et al., arXiv 1706.05587, Sec. 3.3): the image
    pooling branch (``image_pool.0`` global average pool, ``image_pool.1`` 1x1 conv-BN-ReLU,
    upsampled back), the ``aspp_modules`` (a 1x1 branch for dilation 1, 3x3 branches dilated
    12 / 24 / 36), all concatenated, a 3x3 ``bottleneck``, ``cls_seg``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = ASPP_DILATIONS, dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, dilation=d) for d in dilations)
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls_seg(self.bottleneck(torch.cat([pooled, *(branch(x) for branch in self.aspp_modules)], dim=1)))


class PSPNet(_SimpleSegmentationModel):
    """PSPNet as torchvision's segmentation models: ``backbone`` (an IntermediateLayerGetter giving
    ``"out"`` = layer4 and ``"aux"`` = layer3), ``classifier`` (:class:`PSPHead`), ``aux_classifier``
    (:class:`FCNHead` with one conv, or None); forward returns ``{"out", "aux"}`` at the input size."""

    def __init__(self, backbone: nn.Module, classifier: PSPHead, aux_classifier: Optional[FCNHead] = None) -> None:
        super().__init__(backbone, classifier, aux_classifier)
