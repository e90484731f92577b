"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022), Eq. 3-6.

With Y = softmax(Z / tau) row-wise for a batch of B samples and C classes, and the Pearson distance
d_p(u, v) = 1 - rho(u, v) (the cosine similarity of the mean-centred vectors)::

    L_inter = tau^2 / B * sum_i d_p(Y_s[i, :], Y_t[i, :])     (each sample's distribution over classes)
    L_intra = tau^2 / C * sum_j d_p(Y_s[:, j], Y_t[:, j])     (each class's scores over the batch)
    L_DIST  = beta * L_inter + gamma * L_intra

Matching relations rather than values lets the student keep its own scale and shift of the
teacher's predictions.
"""

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss

__all__ = ["pearson_distance", "dist_loss"]


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - rho(a[i], b[i])`` averaged over the rows of two (N, D) tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    rho = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - rho.mean()


@float32_loss
def dist_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, beta: float = 1.0,
              gamma: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """``beta * L_inter + gamma * L_intra`` on softmax(logits / temperature), in float32."""
    y_s = F.softmax(logits_student / temperature, dim=1)
    y_t = F.softmax(logits_teacher / temperature, dim=1)
    inter = pearson_distance(y_s, y_t)
    intra = pearson_distance(y_s.t(), y_t.t())
    return temperature**2 * (beta * inter + gamma * intra)
