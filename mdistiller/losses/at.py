"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017)."""

from typing import Sequence

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss
from mdistiller.losses.spatial import pool_to_smaller


def attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    """`normalize(mean_c(f^p))`, flattened to (B, H*W) and L2-normalised per sample (paper eq. 2)."""
    return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))


def single_stage_at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    """Mean squared difference of the two attention maps, the larger map pooled to the smaller."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@float32_loss
def at_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], p: float) -> torch.Tensor:
    """Sum over stage pairs (zipped from the first stage, as MDistiller does) of the AT loss."""
    return sum(single_stage_at_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))
