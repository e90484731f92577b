"""Relational KD (Park et al., "Relational Knowledge Distillation", CVPR 2019): distance + angle."""

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss


def pairwise_distance(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(N, N) Euclidean distances (squared ones clamped at `eps` first), zero on the diagonal."""
    sq_norm = e.pow(2).sum(1)
    dist = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    return dist * (1 - torch.eye(len(e), dtype=dist.dtype, device=dist.device))


def _normalised_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """Distances divided by their mean over the positive entries (paper eq. 5, mu)."""
    d = pairwise_distance(e, squared, eps)
    return d / d[d > 0].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every triple (i, j, k), flattened (paper eq. 7)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@float32_loss
def rkd_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """`distance_weight * smoothL1(psi_D) + angle_weight * smoothL1(psi_A)` on flattened embeddings."""
    stu = f_s.reshape(f_s.shape[0], -1)
    tea = f_t.reshape(f_t.shape[0], -1).detach()
    loss_d = F.smooth_l1_loss(_normalised_distances(stu, squared, eps), _normalised_distances(tea, squared, eps))
    loss_a = F.smooth_l1_loss(_angles(stu), _angles(tea))
    return distance_weight * loss_d + angle_weight * loss_a
