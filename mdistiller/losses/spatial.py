"""Spatial alignment of two feature maps before they are compared."""

from typing import Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor


def common_size(shape_a: Sequence[int], shape_b: Sequence[int]) -> Tuple[int, int]:
    """The (h, w) both maps can be average-pooled to: the smaller of each (shapes end in h, w)."""
    return min(shape_a[-2], shape_b[-2]), min(shape_a[-1], shape_b[-1])


def pool_to_size(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """``x`` average-pooled to ``size`` (adaptive pooling); unchanged when it already has it."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size)


def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> Tuple[Tensor, Tensor]:
    """Average-pool the map with the larger height to the other's size (MDistiller's AT / NST / VID rule)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return f_s, f_t


def upsampled_at_most(shape: Sequence[int], size: Sequence[int], factor: int = 2) -> bool:
    """Whether :func:`resize_to` brings a map of ``shape`` to ``size`` (h, w) by pooling it down in
    both sides or by upsampling it at most ``factor`` times in both: not larger in one side and
    smaller in the other, and not upsampled further (bilinear interpolation adds no detail, so a
    frequency loss on such a map compares empty bands)."""
    (h, w), (to_h, to_w) = shape[-2:], size[-2:]
    return (h >= to_h and w >= to_w) or (h <= to_h <= factor * h and w <= to_w <= factor * w)


def resize_to(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """``x`` at spatial ``size``: average-pooled when larger, bilinearly upsampled when smaller."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
