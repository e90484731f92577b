"""Knowledge review (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021).

`ABF` is the attention-based fusion block (its fusion step `SigmoidAttentionFusion`), `ReviewFusion`
the top-down fusion of a feature hierarchy through one ABF per level, and `hcl_loss` the hierarchical
context loss. `FusionHierarchy` runs any such levels (shallow level first), so other methods can reuse
the hierarchy with their own blocks.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

Size = Union[int, Tuple[int, int]]


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class SigmoidAttentionFusion(nn.Sequential):
    """ReviewKD's fusion of a map x with the deeper level's map y of the same shape: two attention
    maps ``a = sigmoid(conv1x1([x, y]))`` (2C -> 2, with bias), output ``x * a_0 + y * a_1``."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels * 2, 2, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        att = super().forward(torch.cat([x, y], dim=1))
        return x * att[:, 0:1] + y * att[:, 1:2]


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv + BN on the input, fused with the (upsampled) output of the
    deeper level through two sigmoid attention maps, resized to `out_size`, then 3x3 conv + BN.

    `forward(x, residual, out_size)` returns `(output, fused)`: the output matched against the
    teacher and the fused map handed to the next, shallower level.
    """

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = SigmoidAttentionFusion(mid_channel) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                out_size: Optional[Size] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            x = self.att_conv(x, F.interpolate(residual, size=x.shape[-2:], mode="nearest"))
        if out_size is not None and tuple(x.shape[-2:]) != _pair(out_size):
            x = F.interpolate(x, size=_pair(out_size), mode="nearest")
        return self.conv2(x), x


class FusionHierarchy(nn.ModuleList):
    """Levels fused from the deepest up. Child ``i`` serves level ``n - 1 - i`` (child 0 the deepest
    level, the only one without a deeper map) and is called ``child(x, residual, out_size)`` ->
    ``(output, fused)``, `residual` being the deeper child's fused map (None for child 0).

    `forward(features)` takes the maps shallow level first and returns the outputs in the same order,
    at the built `out_shapes` or, when given, at this call's `out_shapes` (dense maps, whose sizes
    follow each batch's padded size).
    """

    def __init__(self, levels: Sequence[nn.Module], out_shapes: Sequence[Size]) -> None:
        super().__init__(levels)
        self.out_shapes = [_pair(s) for s in out_shapes]

    def forward(self, features: Sequence[torch.Tensor], out_shapes: Optional[Sequence[Size]] = None
                ) -> List[torch.Tensor]:
        if len(features) != len(self):
            raise ValueError(f"{type(self).__name__} built for {len(self)} levels got {len(features)} maps")
        outputs: List[torch.Tensor] = []
        residual = None
        shapes = self.out_shapes if out_shapes is None else [_pair(s) for s in out_shapes]
        for level, feature, size in zip(self, reversed(features), reversed(shapes)):
            out, residual = level(feature, residual, size)
            outputs.insert(0, out)
        return outputs


class ReviewFusion(FusionHierarchy):
    """One ABF per level, fused from the deepest level up (:class:`FusionHierarchy`).

    Args:
        in_channels: channels of the input maps, shallow level first.
        mid_channel: width of the fused maps.
        out_channels: channels of the outputs, shallow level first.
        out_shapes: spatial size (int or (h, w)) of each output, shallow level first.

    Child `i` serves level `n - 1 - i`, the order MDistiller's `abfs` state-dict keys follow.
    """

    def __init__(self, in_channels: Sequence[int], mid_channel: int, out_channels: Sequence[int],
                 out_shapes: Sequence[Size]) -> None:
        if not len(in_channels) == len(out_channels) == len(out_shapes):
            raise ValueError(f"ReviewFusion needs one entry per level: {len(in_channels)} in_channels, "
                             f"{len(out_channels)} out_channels, {len(out_shapes)} out_shapes")
        last = len(in_channels) - 1
        super().__init__([ABF(in_channels[i], mid_channel, out_channels[i], fuse=i < last)
                          for i in reversed(range(len(in_channels)))], out_shapes)


def hcl_loss(features_student: Sequence[torch.Tensor], features_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss, summed over levels.

    Per level: MSE at full size plus the MSE of both maps average-pooled to 4x4, 2x2 and 1x1 (only
    the sizes smaller than the map's height), weighted 1, 1/2, 1/4, 1/8 and divided by the sum of
    the weights used.
    """
    levels = []
    for fs, ft in zip(features_student, features_teacher):
        loss = F.mse_loss(fs, ft)
        weight, weights = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            weights += weight
        levels.append(loss / weights)
    return sum(levels[1:], levels[0])
