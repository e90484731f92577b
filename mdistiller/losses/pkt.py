"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018)."""

import torch

from mdistiller.losses._precision import float32_loss


def _cosine_probabilities(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Cosine similarities mapped to [0, 1] and normalised per row into conditional probabilities."""
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
    similarity = (f @ f.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


@float32_loss
def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """`mean_ij p_t log((p_t + eps) / (p_s + eps))` over the cosine-kernel probabilities (eq. 9),
    averaged over all b x b entries as in the authors' code."""
    p_s = _cosine_probabilities(f_s, eps)
    p_t = _cosine_probabilities(f_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
