"""PKD: Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022.

Both maps are standardised per channel over (N, H, W) jointly; the loss is the MSE of the
standardised maps over 2 (equal to ``1 - Pearson r`` per channel up to a constant; Eq. 4-5). A
student map of another spatial size is first resized to the teacher's (bilinear).

In the frequency domain (FreeKD, Zhang et al. CVPR 2024, supplement B, Table 10: "normalizing the
high-frequency features with Pearson correlation") the same loss runs on the Haar detail bands of
each DWT level, every (channel, orientation) pair one channel
(:func:`mdistiller.frequency.haar.haar_detail_channels`), summed over the levels.
"""

import torch.nn.functional as F
from torch import Tensor

from mdistiller.frequency.haar import haar_detail_channels


def channel_standardize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x - mean) / (std + eps)`` per channel over batch and space (std unbiased)."""
    flat = x.float().transpose(0, 1).reshape(x.size(1), -1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, keepdim=True) + eps)
    return flat.reshape(x.size(1), x.size(0), *x.shape[2:]).transpose(0, 1)


def _to_teacher_size(s: Tensor, t: Tensor) -> Tensor:
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return s


def pkd_loss(s: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """``MSE(standardize(s), standardize(t)) / 2``."""
    s = _to_teacher_size(s, t)
    return F.mse_loss(channel_standardize(s, eps), channel_standardize(t, eps)) / 2


def frequency_pkd_loss(s: Tensor, t: Tensor, levels: int = 1, eps: float = 1e-6) -> Tensor:
    """``sum_j pkd_loss(D_j(s), D_j(t))`` over the detail bands D_j of DWT levels j = 1..``levels``
    (``s`` resized to the teacher's size first, so that both have the same bands)."""
    s = _to_teacher_size(s, t)
    return sum(pkd_loss(a, b, eps) for a, b in zip(haar_detail_channels(s, levels), haar_detail_channels(t, levels)))
