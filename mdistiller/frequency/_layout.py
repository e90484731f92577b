"""The memory layout of a feature map, so that results and gradients can be given back in it."""

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels-last 4-D map (one that is not also plain contiguous),
    else ``torch.contiguous_format``. A result in another layout than the network's slows every
    kernel that meets it (layout conversions in the convolutions, ReLU and BatchNorm backward)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
