"""SFAKD (You et al., 2025): the bottleneck projector and the feature loss.

The SFA module itself lives in :mod:`mdistiller.frequency.fft_filter`.
"""

import torch.nn.functional as F
from torch import Tensor, nn


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv (groups = channels), pointwise 1x1 conv, BN, ReLU; no conv bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.pointwise(self.depthwise(x))))


def bottleneck_projector(in_channels: int, out_channels: int) -> nn.Sequential:
    """SFAKD's adaptive bottleneck, mid = floor((in + out) / 2) channels:

    1x1 conv -> BN -> ReLU -> depthwise-separable 3x3 (-> BN -> ReLU) -> 1x1 conv -> BN -> ReLU.
    Indices equal the authors' ``transfer`` module, so its checkpoints load.
    """
    mid = (in_channels + out_channels) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        DepthwiseSeparableConv(mid, mid, kernel_size=3),
        nn.Conv2d(mid, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def sfakd_feature_loss(projected: Tensor, teacher: Tensor, pooled: bool = False) -> Tensor:
    """Mean squared error between the projected student map and the teacher map, both (B, C, h, w).

    ``pooled=False`` (authors' code): over every element of the maps. ``pooled=True`` (the seed
    README's wording): between the globally average-pooled (B, C) vectors; `teacher` may then be
    that (B, C) vector already (the teacher's pooled feature, as the teacher cache holds it).
    """
    if pooled:
        projected = projected.mean(dim=(2, 3))
        teacher = teacher if teacher.dim() == 2 else teacher.mean(dim=(2, 3))
    return F.mse_loss(projected, teacher)
