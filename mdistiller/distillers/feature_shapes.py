"""Feature shapes of a model, found by one dummy forward (for methods that size modules at build time)."""

from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.errors import ConfigError

FeatureShapes = Dict[str, Union[List[torch.Size], torch.Size]]


@torch.no_grad()
def feature_shapes(model: nn.Module, image_size: int) -> FeatureShapes:
    """`{"feats": [...], "preact_feats": [...], "pooled_feat": ...}` shapes for one image_size^2 image.

    The probe runs in eval mode (MDistiller probes in train mode, which moves the teacher's
    BatchNorm running statistics towards those of a random image), on the model's device and dtype, and
    leaves the model's mode as it found it.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        _, feats = model(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return {
        "feats": [f.shape for f in feats["feats"]],
        "preact_feats": [f.shape for f in feats["preact_feats"]],
        "pooled_feat": feats["pooled_feat"].shape,
    }


def probe_image_size(cfg: CN, method_input_size: Sequence[int], key: str) -> int:
    """The probe size: DATASET.IMAGE_SIZE.

    MDistiller sizes FitNet / VID modules with their own `INPUT_SIZE` key (default (32, 32)); the
    key is kept so MDistiller's YAML files merge, and a value other than the default that
    disagrees with DATASET.IMAGE_SIZE is refused rather than silently ignored.
    """
    size = image_size(cfg)
    requested = tuple(method_input_size)
    if requested not in ((32, 32), (size, size)):
        raise ConfigError(
            f"{key} {list(requested)} disagrees with DATASET.IMAGE_SIZE {size}; modules are sized from "
            f"DATASET.IMAGE_SIZE, so set that instead (and leave {key} at its default)."
        )
    return size
