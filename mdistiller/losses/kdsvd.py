"""KD with singular value decomposition (Lee et al., "Self-supervised Knowledge Distillation Using
Singular Value Decomposition", ECCV 2018), as MDistiller ports the authors' TensorFlow code."""

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss
from mdistiller.losses.spatial import pool_to_smaller


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def truncated_svd(feat: torch.Tensor, n: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`u, s, v` of `feat` viewed as (B, C*H, W), the first `n` of each, each L2-normalised along dim 1.

    The (B, C*H, W) view is MDistiller's (a plain reshape of NCHW; the TensorFlow original factors
    (B, H*W, C)), kept so the values match. Non-finite entries become 0. `n <= 0` keeps all.
    """
    b, c, h, w = feat.shape
    u, s, vh = torch.linalg.svd(feat.reshape(b, c * h, w).float(), full_matrices=False)
    u, s, v = _finite_or_zero(u), _finite_or_zero(s), _finite_or_zero(vh.transpose(-2, -1))
    if n > 0:
        u = F.normalize(u[:, :, :n], dim=1)
        s = F.normalize(s[:, :n], dim=1)
        v = F.normalize(v[:, :, :n], dim=1)
    return u, s, v


def align_singular_vectors(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each column of `b`, the column of `a` most aligned with it (largest |cosine|), sign-flipped
    to point the same way; returns (aligned a, b)."""
    cosine = a.transpose(-2, -1) @ b
    best = cosine.abs().amax(1, keepdim=True)
    selection = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return a @ selection, b


@float32_loss
def kdsvd_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], k: int = 1) -> torch.Tensor:
    """Sum over consecutive stage pairs of `||RBF_s - RBF_t||^2 / B`.

    Per stage: teacher keeps `k` right singular vectors, the student `k + 3` aligned to them; both
    are scaled by the teacher's normalised singular values; the RBF `exp(-(v_i - v'_j)^2 / 8)` is
    taken between a stage and the previous one. Stage pairs zip from the first stage. Where the
    student and teacher maps differ in size (MDistiller fails there) the larger is pooled to the
    smaller first. The teacher's vectors keep the SVD routine's arbitrary signs, on which the
    RBF between stages depends, as in MDistiller. Gradients through the SVD are undefined where
    singular values repeat (e.g. several all-zero columns).
    """
    losses = []
    prev_s = prev_t = None
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = pool_to_smaller(f_s, f_t)
        _, s_t, v_t = truncated_svd(f_t, k)
        _, _, v_s = truncated_svd(f_s, k + 3)
        v_s, v_t = align_singular_vectors(v_s, v_t)
        s_t = s_t.unsqueeze(1)
        v_t, v_s = v_t * s_t, v_s * s_t
        if prev_s is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            losses.append(_finite_or_zero((rbf_s - rbf_t.detach()).pow(2)).sum())
        prev_s, prev_t = v_s, v_t
    return sum((loss / g_s[0].shape[0] for loss in losses), g_s[0].new_zeros(()))
