"""CanKD: Sun & Ohyama, "CanKD: Cross-Attention-based Non-local operation for Feature-based
Knowledge Distillation" (2025).

A non-local block whose queries come from the student map ``s`` and whose keys and values come
from the (max-pooled) teacher map ``t``, both (B, C, H, W):

    f_ij = theta(s_i)^T phi(t_j) / N        dot product (default), N = pooled teacher positions
    f_ij = softmax_j(s_i^T pool(t)_j)       Gaussian (no theta / phi)
    f_ij = softmax_j(theta(s_i)^T phi(t_j)) embedded Gaussian
    y_i  = sum_j f_ij g(t_j)
    z_s  = W(y) + s  (residual; W(y) without it),   z_t = t
    loss = MSE(IN(z_s), IN(z_t)) / 2                 IN: instance norm without affine

theta, phi, g are 1x1 convs C -> C/2 (phi and g followed by the max-pool), W a 1x1 conv C/2 -> C
and a BatchNorm whose weight and bias start at 0, so z_s = s at initialisation.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AFFINITIES = ("dot_product", "gaussian", "embedded_gaussian")


class CrossAttentionNonLocal(nn.Module):
    """The CanKD block: ``forward(s, t)`` returns ``z_s``; ``s`` and ``t`` have the same shape."""

    def __init__(self, channels: int, affinity: str = "dot_product", residual: bool = True,
                 pool_size: int = 2, inter_channels: Optional[int] = None) -> None:
        super().__init__()
        if affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}, got '{affinity}'")
        self.affinity = affinity
        self.residual = residual
        self.inter_channels = inter_channels or max(channels // 2, 1)
        embed = affinity != "gaussian"
        self.theta = nn.Conv2d(channels, self.inter_channels, kernel_size=1) if embed else None
        self.phi = nn.Conv2d(channels, self.inter_channels, kernel_size=1) if embed else None
        self.g = nn.Conv2d(channels, self.inter_channels, kernel_size=1)
        self.pool = nn.MaxPool2d(kernel_size=pool_size)
        self.W = nn.Sequential(nn.Conv2d(self.inter_channels, channels, kernel_size=1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def attention(self, s: Tensor, t: Tensor) -> Tensor:
        """The affinity ``f``: (B, H*W student positions, N pooled teacher positions)."""
        if self.affinity == "gaussian":
            query, key = s, self.pool(t)
        else:
            query, key = self.theta(s), self.pool(self.phi(t))
        f = torch.bmm(query.flatten(2).transpose(1, 2), key.flatten(2))
        if self.affinity == "dot_product":
            return f / f.size(-1)
        return F.softmax(f, dim=-1)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        if s.shape != t.shape:
            raise ValueError(f"student and teacher maps must have one shape, got {tuple(s.shape)} and {tuple(t.shape)}")
        value = self.pool(self.g(t)).flatten(2).transpose(1, 2)
        y = torch.bmm(self.attention(s, t), value)
        y = y.transpose(1, 2).reshape(s.size(0), self.inter_channels, *s.shape[2:])
        z = self.W(y)
        return z + s if self.residual else z


def instance_normalized_mse(a: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    """``MSE(IN(a), IN(b)) / 2``: each (sample, channel) map standardised over space, no affine."""
    return F.mse_loss(F.instance_norm(a, eps=eps), F.instance_norm(b, eps=eps)) / 2


def cankd_loss(block: CrossAttentionNonLocal, s: Tensor, t: Tensor) -> Tensor:
    """``MSE(IN(z_s), IN(t)) / 2`` with ``z_s = block(s, t)``."""
    return instance_normalized_mse(block(s, t), t)
