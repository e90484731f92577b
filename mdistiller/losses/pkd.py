"""PKD: Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022.

Both maps are standardised per channel over (N, H, W) jointly; the loss is the MSE of the
standardised maps over 2 (equal to ``1 - Pearson r`` per channel up to a constant; Eq. 4-5). A
student map of another spatial size is first resized to the teacher's (bilinear).
"""

import torch.nn.functional as F
from torch import Tensor


def channel_standardize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x - mean) / (std + eps)`` per channel over batch and space (std unbiased)."""
    flat = x.float().transpose(0, 1).reshape(x.size(1), -1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, keepdim=True) + eps)
    return flat.reshape(x.size(1), x.size(0), *x.shape[2:]).transpose(0, 1)


def pkd_loss(s: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """``MSE(standardize(s), standardize(t)) / 2``."""
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(channel_standardize(s, eps), channel_standardize(t, eps)) / 2
