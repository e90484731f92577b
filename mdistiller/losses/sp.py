"""Similarity-preserving KD (Tung & Mori, ICCV 2019)."""

from typing import Sequence

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss


def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """`||G_t - G_s||_F^2 / b^2`, G the row-L2-normalised b x b Gram matrix of the flattened maps (eq. 2-4)."""
    bsz = f_s.shape[0]
    f_s, f_t = f_s.reshape(bsz, -1), f_t.reshape(bsz, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (bsz * bsz)


@float32_loss
def sp_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the SP loss over stage pairs."""
    return sum(similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))
