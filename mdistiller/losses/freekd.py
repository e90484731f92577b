"""FreeKD's distillation loss (Zhang et al., "FreeKD: Knowledge Distillation via Semantic Frequency
Prompt", CVPR 2024): band-wise L1 imitation under the frozen prompt's masks, optionally weighted per
channel by the position-aware relation of the paper.

For one feature level with teacher bands a_k, student bands b_k and masks M_k (T x h_k x w_k) of
band set k:

    L = sum_k mean_{b,t,c,(o),y,x} w_{b,c} * | M_{k,t} * a_k - M_{k,t} * b_k |

k runs over the high-band levels 1..L (authors' code) plus LL_L with ``low_band`` (paper); the mean
is over batch, tokens, channels, orientations and positions (``F.l1_loss`` of the authors' code).
The weights w are 1 in the authors' code; the paper's relation weights are ``w_r = w_t * w_s`` with
each ``w = gate(softmax(psi(F_deep) F^T))`` (:class:`ChannelRelation`), here renormalised to mean 1
over channels so that the loss cannot be lowered by shrinking every weight.
"""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.frequency.haar import transform_dtype
from mdistiller.frequency.prompt import FrequencyBands
from mdistiller.losses._precision import float32_loss

__all__ = ["ChannelRelation", "freekd_band_loss", "freekd_loss", "relation_weights"]


@float32_loss
def freekd_band_loss(masks: Tensor, teacher_band: Tensor, student_band: Tensor,
                     channel_weights: Optional[Tensor] = None) -> Tensor:
    """``mean |w_c M_t a - w_c M_t b|`` over (B, T, C, [3,] h, w) for one band set.

    masks (B, T, h, w) are non-negative, so ``|M a - M b| = M |a - b|`` and the mean factorises
    into sums over tokens and over channels; no (B, T, C, ...) tensor is built.
    """
    dtype = transform_dtype(student_band)
    diff = (student_band.to(dtype) - teacher_band.to(dtype)).abs()
    if diff.dim() == 5:
        diff = diff.sum(dim=2)
        orientations = student_band.shape[2]
    else:
        orientations = 1
    if channel_weights is not None:
        diff = diff * channel_weights.to(dtype)[:, :, None, None]
    total = (masks.to(dtype).sum(dim=1) * diff.sum(dim=1)).sum()
    b, t = masks.shape[:2]
    count = b * t * student_band.shape[1] * orientations * masks.shape[-2] * masks.shape[-1]
    return total / count


def freekd_loss(masks: List[Tensor], teacher: FrequencyBands, student: FrequencyBands, low_band: bool = False,
                channel_weights: Optional[Tensor] = None) -> Tensor:
    """FreeKD loss of one feature level: the high-band levels (+ LL_L when ``low_band``).

    ``masks[k]`` belongs to band set k of :meth:`FrequencyBands.band_sets` (0: LL_L, j: level j).
    """
    pairs = list(zip(masks, teacher.band_sets(), student.band_sets()))
    if not low_band:
        pairs = pairs[1:]
    return sum(freekd_band_loss(m, a, b, channel_weights) for m, a, b in pairs)


class ChannelRelation(nn.Module):
    """Channel weights from the relation of a map with the next deeper map (FreeKD paper, Sec. 3.3).

    ``w = sigmoid(gate(softmax(psi(F_deep) F^T / sqrt(h w))))``: psi is a 1x1 conv taking the deeper
    map (bilinearly resized to the map's size) to the map's C channels; the C x C relation's rows
    are reduced to one weight each by the gate MLP (C -> C/4 -> 1). The 1/sqrt(hw) scaling keeps the
    softmax from saturating (the paper gives no scale).
    """

    def __init__(self, channels: int, deep_channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 1)
        self.psi = nn.Conv2d(deep_channels, channels, kernel_size=1)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, deeper: Tensor) -> Tensor:
        """Weights (B, C) in (0, 1) for the map x (B, C, h, w) given the deeper map (B, C_d, h', w')."""
        if deeper.shape[-2:] != x.shape[-2:]:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="bilinear", align_corners=False)
        query = self.psi(deeper).flatten(2)
        key = x.flatten(2).to(query.dtype)
        relation = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(key.shape[-1]), dim=-1)
        return torch.sigmoid(self.gate(relation)).squeeze(-1).float()


def relation_weights(teacher_weights: Tensor, student_weights: Tensor, eps: float = 1e-12) -> Tensor:
    """``w_r = w_t * w_s``, renormalised to mean 1 over the channels of each sample."""
    weights = teacher_weights * student_weights
    return weights / (weights.mean(dim=1, keepdim=True) + eps)
