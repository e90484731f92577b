"""FAM-KD (Pham et al., "Frequency Attention for Knowledge Distillation", WACV 2024): the fusion
hierarchy of the student's maps, each level ending in the frequency attention module, and the loss.

One level (the authors' ``CROSSATF``) takes the student's map x and the fused map r of the next deeper
level:

    x' = ReLU(BN(conv1x1(x)))                 only when x's channels differ from the level's width
    r' = ReLU(BN(conv1x1(r)))                 only when r's channels differ from the level's width
    f  = fuse(x', nearest_resize(r', size of x'))                 (the deepest level: f = x')
    f  = nearest_resize(f, the teacher map's size)
    output = ReLU(BN(FAM(f)))                 matched to the teacher map;  f goes to the next level

``fuse`` is the authors' local self-attention (:class:`LocalAttentionFusion`, default) or ReviewKD's
sigmoid attention (:class:`~mdistiller.losses.reviewkd.SigmoidAttentionFusion`), and FAM the
frequency attention module (:class:`~mdistiller.frequency.FrequencyAttention`). The loss is the sum
over levels of the mean squared error to the teacher's maps.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.frequency import FrequencyAttention
from mdistiller.losses.reviewkd import FusionHierarchy, SigmoidAttentionFusion

__all__ = ["FUSIONS", "FAMLevel", "FAMFusion", "LocalAttentionFusion", "famkd_loss"]

FUSIONS = ("attention", "abf")


def famkd_loss(features_student: Sequence[Tensor], features_teacher: Sequence[Tensor]) -> Tensor:
    """``sum_i MSE(s_i, t_i)``: the mean squared error of each level, summed over the levels."""
    losses = [F.mse_loss(fs, ft) for fs, ft in zip(features_student, features_teacher)]
    return sum(losses[1:], losses[0])


class LocalAttentionFusion(nn.Module):
    """Local self-attention over a ``k x k`` window whose query comes from the deeper map (FAM-KD's
    fusion, after Ramachandran et al., "Stand-Alone Self-Attention in Vision Models", NeurIPS 2019).

    For x (the level's map) and y (the deeper level's map, resized to x's size), both C channels:

        q = W_q y,  key = W_k x,  value = W_v x          1x1 convs without bias; x zero-padded by k // 2
        out[c, p] = sum_{n in window(p)} softmax_n(q[c, p] * (key[c, n] + rel[c, n - p])) * value[c, n]

    The softmax runs per channel over the k*k positions of the window. ``rel`` are learned relative
    position embeddings, N(0, 1) at init: the first C/2 channels take ``rel_h`` by the row offset, the
    last C/2 ``rel_w`` by the column offset. The convs start Kaiming-normal (fan_out, ReLU).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if channels % 2 or kernel_size % 2 == 0:
            raise ValueError(f"local attention needs an even channel count and an odd window, got {channels} "
                             f"channels and a window of {kernel_size}")
        self.kernel_size = kernel_size
        self.query = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.rel_h = nn.Parameter(torch.randn(channels // 2, kernel_size))
        self.rel_w = nn.Parameter(torch.randn(channels // 2, kernel_size))
        for conv in (self.query, self.key, self.value):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def relative_positions(self) -> Tensor:
        """(C, k*k): the embedding of each channel at each window position (row-major)."""
        k = self.kernel_size
        rows = self.rel_h[:, :, None].expand(-1, k, k)
        cols = self.rel_w[:, None, :].expand(-1, k, k)
        return torch.cat([rows, cols]).flatten(1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        # The key and value convs have no bias, so convolving then zero-padding equals the authors'
        # padding then convolving.
        keys = F.unfold(self.key(x), k, padding=k // 2).view(b, c, k * k, h, w)
        values = F.unfold(self.value(x), k, padding=k // 2).view(b, c, k * k, h, w)
        keys = keys + self.relative_positions().to(keys.dtype)[None, :, :, None, None]
        attention = torch.softmax(self.query(y)[:, :, None] * keys, dim=2)
        return (attention * values).sum(dim=2)


def _reduce(in_channel: int, out_channel: int) -> Optional[nn.Module]:
    """1x1 conv (no bias, Kaiming-uniform a=1) + BN + ReLU, or None when the widths are equal."""
    if in_channel == out_channel:
        return None
    block = nn.Sequential(nn.Conv2d(in_channel, out_channel, kernel_size=1, bias=False),
                          nn.BatchNorm2d(out_channel), nn.ReLU(inplace=True))
    nn.init.kaiming_uniform_(block[0].weight, a=1)
    return block


class FAMLevel(nn.Module):
    """One level of the hierarchy (module docstring): `forward(x, residual, out_size)` returns
    ``(output, fused)``; `residual_channel` is the deeper level's width, None for the deepest level."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, out_size: Tuple[int, int],
                 residual_channel: Optional[int], fusion: str = "attention", cuton: float = 0.1) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got '{fusion}'")
        self.input_conv = _reduce(in_channel, mid_channel)
        self.residual_conv = None if residual_channel is None else _reduce(residual_channel, mid_channel)
        self.fusion: Optional[nn.Module] = None
        if residual_channel is not None:
            fuse = LocalAttentionFusion if fusion == "attention" else SigmoidAttentionFusion
            self.fusion = fuse(mid_channel)
        self.head = nn.Sequential(FrequencyAttention(mid_channel, out_channel, out_size, cuton),
                                  nn.BatchNorm2d(out_channel), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, residual: Optional[Tensor] = None,
                out_size: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
        if self.input_conv is not None:
            x = self.input_conv(x)
        if self.fusion is not None:
            if self.residual_conv is not None:
                residual = self.residual_conv(residual)
            x = self.fusion(x, F.interpolate(residual, size=x.shape[-2:], mode="nearest"))
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.head(x), x


class FAMFusion(FusionHierarchy):
    """FAM-KD's hierarchy: one :class:`FAMLevel` per level, fused from the deepest up.

    Args (per level, shallow level first):
        in_channels: channels of the student's maps.
        mid_channels: the levels' widths (the authors' MID_CHANNELS; their configs use the student's
            channels, so no level has an input conv).
        out_channels, out_shapes: channels and (h, w) of the teacher maps matched.
        fusion: "attention" (the authors') or "abf" (ReviewKD's).
        cuton: the high-pass's centre-square fraction (:class:`~mdistiller.frequency.FrequencyAttention`).
    """

    def __init__(self, in_channels: Sequence[int], mid_channels: Sequence[int], out_channels: Sequence[int],
                 out_shapes: Sequence[Tuple[int, int]], fusion: str = "attention", cuton: float = 0.1) -> None:
        if not len(in_channels) == len(mid_channels) == len(out_channels) == len(out_shapes):
            raise ValueError(f"FAMFusion needs one entry per level: {len(in_channels)} in_channels, "
                             f"{len(mid_channels)} mid_channels, {len(out_channels)} out_channels, "
                             f"{len(out_shapes)} out_shapes")
        last = len(in_channels) - 1
        levels: List[nn.Module] = [
            FAMLevel(in_channels[i], mid_channels[i], out_channels[i], tuple(out_shapes[i]),
                     None if i == last else mid_channels[i + 1], fusion, cuton)
            for i in reversed(range(len(in_channels)))]
        super().__init__(levels, out_shapes)
