"""The frequency prompt of FreeKD (Zhang et al., "FreeKD: Knowledge Distillation via Semantic
Frequency Prompt", CVPR 2024), reusable by other prompt-based methods.

A feature map F (B, C, H, W) is split by an L-level Haar DWT into band sets: the approximation
LL_L and, at each level j = 1..L, the high bands (LH, HL, HH) of that level. A prompt holds one
token set P_k (T x C) per band set k (k = 0: LL_L, k = j: high bands of level j), initialised
N(0, 0.01). With R_k the teacher band flattened to C x (h*w) (high bands: the three orientations
summed), the k-th masks are

    M_k = sigmoid(P_k R_k)                         T masks of h x w

Stage 1 (prompt learning) plugs the prompt into the teacher: F is replaced by
``IDWT(sum_t M_{k,t} * band_k)``, every orientation of a level sharing its masks (authors' code),
and the masks of one band set are kept apart by a diversity term, the mean over pairs t != t' of a
similarity (Dice in the authors' code, soft Jaccard in the paper):

    Dice(p, q)    = 2 <p, q> / (<p, p> + <q, q>)
    Jaccard(p, q) = <p, q> / (<p, p> + <q, q> - <p, q>)

Stage 2 uses the frozen prompt's masks to weight the band-wise imitation loss
(:mod:`mdistiller.losses.freekd`). Masks and bands are computed in float32 even under autocast.
"""

import contextlib
from dataclasses import dataclass
from typing import ContextManager, List, Tuple

import torch
from torch import Tensor, nn

from mdistiller.frequency.haar import haar_wavedec2, haar_waverec2, transform_dtype

__all__ = [
    "DIVERSITY_KINDS",
    "FrequencyBands",
    "FrequencyPrompt",
    "apply_masks",
    "dice_diversity",
    "full_precision",
    "mask_diversity",
    "prompt_masks",
    "soft_jaccard_diversity",
]

DIVERSITY_KINDS = ("dice", "jaccard")


def full_precision(x: Tensor) -> ContextManager:
    """Autocast switched off on `x`'s device (a no-op context where autocast is not running)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


@dataclass
class FrequencyBands:
    """The Haar bands of a map, grouped as FreeKD uses them.

    ``low``: LL_L, (B, C, h_L, w_L). ``highs[j - 1]``: the high bands of level j (finest first),
    (B, C, 3, h_j, w_j) with the orientations in PyWavelets' order (cH, cV, cD). ``size``: the
    (H, W) of the map, which :meth:`reconstruct` crops back to.
    """

    low: Tensor
    highs: List[Tensor]
    size: Tuple[int, int]

    @classmethod
    def of(cls, x: Tensor, levels: int) -> "FrequencyBands":
        coeffs = haar_wavedec2(x, levels)
        highs = [torch.stack(detail, dim=-3) for detail in reversed(coeffs[1:])]
        return cls(coeffs[0], highs, (x.shape[-2], x.shape[-1]))

    @property
    def levels(self) -> int:
        return len(self.highs)

    def band_sets(self) -> List[Tensor]:
        """[LL_L, high bands of level 1, ..., level L]: index k matches the prompt's token set k."""
        return [self.low] + list(self.highs)

    def mask_inputs(self) -> List[Tensor]:
        """The R_k of the mask formula, (B, C, h_k, w_k): LL_L and each level's orientations summed."""
        return [self.low] + [high.sum(dim=-3) for high in self.highs]

    def reconstruct(self) -> Tensor:
        """The inverse DWT, cropped to :attr:`size`."""
        coeffs = [self.low] + [tuple(high.unbind(dim=-3)) for high in reversed(self.highs)]
        return haar_waverec2(coeffs, self.size)


def prompt_masks(tokens: Tensor, band: Tensor) -> Tensor:
    """``sigmoid(P R)``: tokens P (T, C) against a band R (B, C, h, w) -> masks (B, T, h, w)."""
    with full_precision(band):
        band = band.to(transform_dtype(band))
        return torch.einsum("tc,bchw->bthw", tokens.to(band.dtype), band).sigmoid()


def apply_masks(band: Tensor, masks: Tensor) -> Tensor:
    """``sum_t M_t * band`` for a band (B, C, h, w) or stacked orientations (B, C, 3, h, w)."""
    total = masks.sum(dim=1, keepdim=True)  # (B, 1, h, w)
    if band.dim() == 5:
        total = total.unsqueeze(2)
    return band * total


def _pairwise_mean(masks: Tensor, similarity) -> Tensor:
    """Mean of `similarity(<p,q>, <p,p>, <q,q>)` over the batch and the ordered pairs t != t'."""
    flat = masks.flatten(2)  # (B, T, N)
    with full_precision(masks):
        flat = flat.to(transform_dtype(flat))
        gram = flat @ flat.transpose(1, 2)  # (B, T, T)
        norms = gram.diagonal(dim1=1, dim2=2)
        values = similarity(gram, norms.unsqueeze(2), norms.unsqueeze(1))
    num_tokens = flat.shape[1]
    if num_tokens < 2:
        return values.new_zeros(())
    off_diagonal = ~torch.eye(num_tokens, dtype=torch.bool, device=masks.device)
    return values[:, off_diagonal].mean()


def dice_diversity(masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean pairwise Dice coefficient ``2<p,q> / (<p,p> + <q,q>)`` of the T masks (B, T, h, w)."""
    return _pairwise_mean(masks, lambda pq, pp, qq: 2 * pq / (pp + qq + 2 * eps))


def soft_jaccard_diversity(masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean pairwise soft Jaccard ``<p,q> / (<p,p> + <q,q> - <p,q>)`` of the T masks (B, T, h, w)."""
    return _pairwise_mean(masks, lambda pq, pp, qq: pq / (pp + qq - pq + eps))


def mask_diversity(masks: Tensor, kind: str = "dice") -> Tensor:
    """The diversity term of one band set: ``"dice"`` (authors' code) or ``"jaccard"`` (paper)."""
    if kind == "dice":
        return dice_diversity(masks)
    if kind == "jaccard":
        return soft_jaccard_diversity(masks)
    raise ValueError(f"diversity must be one of {', '.join(DIVERSITY_KINDS)}, got '{kind}'")


class FrequencyPrompt(nn.Module):
    """The prompt of one feature level: ``levels + 1`` token sets of ``num_tokens`` x ``channels``.

    ``tokens[0]`` masks LL_L, ``tokens[j]`` the high bands of level j. :meth:`masks` gives the
    PoI masks of a map's bands; calling the module gives the stage-1 prompted map and its masks.
    """

    def __init__(self, channels: int, num_tokens: int = 2, levels: int = 3, init_std: float = 0.01) -> None:
        super().__init__()
        if num_tokens < 1 or levels < 1:
            raise ValueError(f"need at least one token and one level, got {num_tokens} tokens, {levels} levels")
        self.levels = levels
        self.tokens = nn.Parameter(torch.empty(levels + 1, num_tokens, channels).normal_(0.0, init_std))

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def channels(self) -> int:
        return self.tokens.shape[2]

    def decompose(self, x: Tensor) -> FrequencyBands:
        return FrequencyBands.of(x, self.levels)

    def masks(self, bands: FrequencyBands) -> List[Tensor]:
        """M_k = sigmoid(P_k R_k) for every band set k, each (B, T, h_k, w_k)."""
        return [prompt_masks(tokens, band) for tokens, band in zip(self.tokens, bands.mask_inputs())]

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Stage 1: ``IDWT(sum_t M_t * bands)`` (same size as `x`, float32 or float64) and the masks."""
        bands = self.decompose(x)
        masks = self.masks(bands)
        masked = [apply_masks(band, mask) for band, mask in zip(bands.band_sets(), masks)]
        return FrequencyBands(masked[0], masked[1:], bands.size).reconstruct(), masks

    def diversity(self, masks: List[Tensor], kind: str = "dice") -> Tensor:
        """Sum over the band sets of the mean pairwise mask similarity (authors' code sums all four)."""
        return sum(mask_diversity(m, kind) for m in masks)
