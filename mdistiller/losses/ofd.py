"""Overhaul of feature distillation (Heo et al., "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019): connectors, margins from the teacher's BatchNorm, partial L2 distance."""

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss


def ofd_margin(bn_weight: torch.Tensor, bn_bias: torch.Tensor) -> torch.Tensor:
    """Per channel, the expectation of the negative responses before the ReLU (paper eq. 4).

    With the pre-activation taken as N(m, s^2) (m the BN bias, s = |BN weight|):
    `m - s * phi(m/s) / Phi(-m/s)` where `Phi(-m/s) > 0.001`, else `-3 s`. Computed in float64,
    returned as float32 (C,).
    """
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    return torch.where(cdf > 0.001, m - s * pdf / cdf, -3 * s).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 distance (paper eq. 5): `(s - target)^2` with `target = max(t, margin)`, except
    where the target is not positive and the student is at or below it (no penalty there).

    Summed over C, H, W, averaged over the batch. `margin` broadcasts as (1, C, 1, 1).
    """
    margin = margin.to(source)
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin))
        + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
        + (source - target) ** 2 * (target > 0)
    )
    return loss.abs().mean(0).sum()


@float32_loss
def ofd_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], margins: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the partial L2 loss, stage i of n weighted 1 / 2^(n-i-1) (deepest 1).

    `g_s` are the student features after the connectors; each teacher map is average-pooled to
    the student's size.
    """
    n = len(g_s)
    total = g_s[0].new_zeros(())
    for i, (f_s, f_t, margin) in enumerate(zip(g_s, g_t, margins)):
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[-2:]).detach()
        total = total + partial_l2(f_s, f_t, margin.view(1, -1, 1, 1)) / 2 ** (n - i - 1)
    return total


def connector(s_channels: int, t_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BN from the student's to the teacher's width; conv weights
    N(0, 2/(k*k*C_t)), BN weight 1, bias 0."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
    bn = nn.BatchNorm2d(t_channels)
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class ConnectorConvBN(nn.Module):
    """One connector per distilled stage, held in `connectors` (MDistiller's parameter names:
    `connectors.<i>.0.weight` for the conv, `connectors.<i>.1.*` for the BN)."""

    def __init__(self, s_channels: Sequence[int], t_channels: Sequence[int], kernel_size: int = 1) -> None:
        super().__init__()
        if len(s_channels) != len(t_channels):
            raise ValueError(f"unequal numbers of stages: student {len(s_channels)}, teacher {len(t_channels)}")
        self.s_channels = list(s_channels)
        self.t_channels = list(t_channels)
        self.connectors = nn.ModuleList(connector(s, t, kernel_size) for s, t in zip(s_channels, t_channels))

    def forward(self, g_s: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [conn(f) for conn, f in zip(self.connectors, g_s)]
