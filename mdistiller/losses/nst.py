"""Neuron selectivity transfer (Huang & Wang, "Like What You Like", 2017): polynomial-kernel MMD."""

from typing import Sequence

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss
from mdistiller.losses.spatial import pool_to_smaller


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`k(x, y) = (x . y)^2` between every channel of `b` (rows) and of `a` (columns): (B, C_b, C_a)."""
    return torch.einsum("bid,bjd->bji", a, b).pow(2)


def single_stage_nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channels' L2-normalised spatial maps (paper eq. 8, d = 2, c = 0)."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    f_s = F.normalize(f_s.flatten(2), dim=2)
    f_t = F.normalize(f_t.flatten(2), dim=2)
    return (
        poly_kernel(f_t, f_t).mean().detach()
        + poly_kernel(f_s, f_s).mean()
        - 2 * poly_kernel(f_s, f_t).mean()
    )


@float32_loss
def nst_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the NST loss over stage pairs (zipped from the first stage)."""
    return sum(single_stage_nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))
