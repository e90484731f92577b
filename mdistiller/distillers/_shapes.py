"""Feature shapes of a model, measured once at build time by a dummy forward."""

from typing import Dict, List, Union

import torch
import torch.nn as nn

Shapes = Dict[str, Union[List[torch.Size], torch.Size]]


@torch.no_grad()
def feature_shapes(model: nn.Module, image_size: int) -> Shapes:
    """Shapes (batch dimension dropped) of `feats`, `preact_feats` and `pooled_feat` for a
    3 x image_size x image_size input.

    The model runs in eval mode (BatchNorm statistics untouched) on the device of its parameters,
    and gets its training mode back afterwards.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        _, feats = model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return {
        "feats": [f.shape[1:] for f in feats["feats"]],
        "preact_feats": [f.shape[1:] for f in feats["preact_feats"]],
        "pooled_feat": feats["pooled_feat"].shape[1:],
    }
