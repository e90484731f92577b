"""Feature shapes of a model, found by one dummy forward (for distillers that size modules at build time)."""

from typing import List

import torch
from torch import nn


@torch.no_grad()
def feature_shapes(model: nn.Module, image_size: int, key: str = "feats") -> List[torch.Size]:
    """(C, H, W) of every entry of ``model(x)[1][key]`` for a (2, 3, image_size, image_size) input.

    Runs in eval mode (the model's mode is restored), on the model's device.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        _, feats = model(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return [f.shape[1:] for f in feats[key]]
