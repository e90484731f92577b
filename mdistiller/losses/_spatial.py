"""Matching the spatial size of a student and a teacher map."""

from typing import Tuple

import torch
import torch.nn.functional as F


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the map with the larger height to the other's size (MDistiller's AT / NST / VID rule)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return f_s, f_t
