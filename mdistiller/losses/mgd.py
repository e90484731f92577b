"""MGD: Yang et al., "Masked Generative Distillation", ECCV 2022.

A random spatial mask drops a fraction ``mask_ratio`` of the (aligned) student map's positions;
a generator (3x3 conv, ReLU, 3x3 conv) must rebuild the teacher map from what is left:
``loss = sum (G(M * s) - t)^2 / N`` (Eq. 2-4; the weight alpha is applied by the caller).
"""

from typing import Optional

import torch
from torch import Tensor, nn


class MaskedGenerator(nn.Module):
    """The generator G of MGD over ``channels`` (the teacher's) channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.generation = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, s: Tensor, mask: Tensor) -> Tensor:
        return self.generation(s * mask)


def random_keep_mask(s: Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """(N, 1, H, W) of 0 (masked, with probability ``mask_ratio``) and 1, on ``s``'s device and dtype."""
    n, _, h, w = s.shape
    draw = torch.rand((n, 1, h, w), generator=generator, device=s.device if generator is None else "cpu")
    return (draw <= 1 - mask_ratio).to(device=s.device, dtype=s.dtype)


def mgd_loss(generator: MaskedGenerator, s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """``sum (G(mask * s) - t)^2 / N``."""
    return (generator(s, mask).float() - t.float()).pow(2).sum() / s.size(0)
