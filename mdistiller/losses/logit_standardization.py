"""Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024)."""

import torch


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each sample's logits: `(z - mean(z)) / (eps + std(z))` over the class dimension.

    `std` is the unbiased (n - 1) standard deviation and `eps` is added to it, as in the authors'
    code. Applied to the student's and the teacher's logits before the division by the temperature.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)
