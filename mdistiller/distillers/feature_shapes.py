"""Feature shapes of a model, found by one dummy forward (for methods that size modules at build time)."""

from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.errors import ConfigError, IncompatibleModelError

FeatureShapes = Dict[str, Union[List[torch.Size], torch.Size]]


@torch.no_grad()
def feature_shapes(model: nn.Module, image_size: int) -> FeatureShapes:
    """`{"feats": [...], "preact_feats": [...], "pooled_feat": ...}` shapes for one image_size^2 image.

    "preact_feats" is present only when the model gives pre-activation maps (the CIFAR / ImageNet
    zoo does; the timm / torchvision adapter does not).

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
    shapes: FeatureShapes = {
        "feats": [f.shape for f in feats["feats"]],
        "pooled_feat": feats["pooled_feat"].shape,
    }
    if "preact_feats" in feats:
        shapes["preact_feats"] = [f.shape for f in feats["preact_feats"]]
    return shapes


def model_name(model: nn.Module) -> str:
    """The name a refusal quotes: an adapter's ``timm:<name>``, else the class name."""
    return getattr(model, "name", type(model).__name__)


def require_preact(shapes: FeatureShapes, model: nn.Module, method: str, why: str) -> None:
    """Refuse `method` (IncompatibleModelError, one line) when `model` gives no ``preact_feats``."""
    if "preact_feats" not in shapes:
        raise IncompatibleModelError(
            f"{method} needs pre-activation stage maps (preact_feats), which {model_name(model)} does not give "
            f"(only the CIFAR / ImageNet zoo models do): {why}"
        )


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
