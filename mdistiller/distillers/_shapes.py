"""Feature shapes of a model, found by one forward pass on a dummy batch."""

from typing import Dict

import torch
from torch import nn


@torch.no_grad()
def feature_shapes(model: nn.Module, image_size: int) -> Dict[str, object]:
    """Shapes of ``feats`` (list), ``preact_feats`` (list) and ``pooled_feat`` for one image of
    ``image_size`` x ``image_size``, batch dimension included (it is 1).

    The model runs in eval mode (its BatchNorm statistics stay untouched) on its own device and
    dtype; its training mode is restored afterwards.
    """
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        _, feats = model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return {
        "feats": [f.shape for f in feats["feats"]],
        "preact_feats": [f.shape for f in feats["preact_feats"]],
        "pooled_feat": feats["pooled_feat"].shape,
    }
