"""A model's classifier and the feature map it sees before global pooling.

Methods that reuse a classifier (SFAKD's teacher head) or apply it before pooling (CAT-KD's class
activation maps) need both. Models keep their usual forward; the map is captured by a forward hook
on the module that produces it, found once by a probe forward.
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.distillers.feature_shapes import model_name
from mdistiller.errors import ConfigError, IncompatibleModelError


def find_classifier(model: nn.Module) -> Tuple[str, nn.Linear]:
    """The model's classifier: its last ``nn.Linear`` (``fc``, ``linear``, ``classifier.0`` ...)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier; pick another model for this method.")
    return linears[-1]


def _first_tensor(value):
    """A tensor, or the first element of a tuple / list of them."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if torch.is_tensor(value) else None


@torch.no_grad()
def find_classifier_input(model: nn.Module, image_size: int) -> Tuple[str, str, bool]:
    """``(module name, "input" | "output", relu)``: where the map the model global-average-pools
    into ``pooled_feat`` appears, and whether a ReLU is applied to it first.

    Found by a probe forward (eval mode, mode restored) that records the 4-D input and output of
    every module (first element of tuples) and keeps the last one larger than 1x1 whose spatial
    mean equals ``pooled_feat``: e.g. ResNet's ``layer3`` output, WRN's ``bn1`` output after a ReLU,
    torchvision ResNet's ``avgpool`` input. ConfigError when nothing qualifies.
    """
    param = next(model.parameters())
    channels = find_classifier(model)[1].in_features
    seen = []  # (name, kind, h * w, spatial mean, spatial mean after ReLU), in the order they appear

    def record(name):
        def hook(module, inputs, output):
            for kind, value in (("input", _first_tensor(inputs)), ("output", _first_tensor(output))):
                if value is not None and value.dim() == 4 and value.shape[1] == channels:
                    value = value.float()
                    seen.append((name, kind, value.shape[-2] * value.shape[-1], value.mean(dim=(2, 3)),
                                 F.relu(value).mean(dim=(2, 3))))
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator(device=param.device).manual_seed(0)
        image = torch.randn(1, 3, image_size, image_size, generator=generator, device=param.device)
        _, feats = model(image.to(param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    pooled = feats["pooled_feat"].float()
    matches = []
    for name, kind, area, mean, relu_mean in reversed(seen):
        for relu, candidate in ((False, mean), (True, relu_mean)):
            if candidate.shape == pooled.shape and torch.allclose(candidate, pooled, rtol=1e-4, atol=1e-5):
                matches.append((area, name, kind, relu))
                break
    # A pooling module's own 1x1 output also qualifies: prefer the last map that is larger.
    best = [m for m in matches if m[0] > 1] or matches
    if not best:
        raise ConfigError(
            f"Could not find the feature map {type(model).__name__} pools into its classifier; "
            "this method needs a model whose global pooling input is a module's input or output."
        )
    return best[0][1:]


def no_pooled_classifier(model: nn.Module, method: str, fix: str) -> IncompatibleModelError:
    """The one-line refusal of `method` for a model whose classifier is not applied to a globally
    average-pooled map (a ViT / DeiT head reads the class token; Swin and Mixer pool tokens;
    ConvNeXt normalises after pooling)."""
    return IncompatibleModelError(
        f"{method} needs a linear classifier applied to a globally average-pooled map, and {model_name(model)} has none "
        f"it can find: {fix}"
    )


class ClassifierInputRecorder:
    """Keeps the latest pre-pooling map of a model, via a forward hook on the module found by
    :func:`find_classifier_input`. ``pop()`` returns it and forgets it."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        self.module_name, self.kind, self.relu = find_classifier_input(model, image_size)
        self._latest: Dict[str, Tensor] = {}
        self._handle = model.get_submodule(self.module_name).register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs, output) -> None:
        value = _first_tensor(inputs if self.kind == "input" else output)
        self._latest["map"] = F.relu(value) if self.relu else value

    def pop(self) -> Tensor:
        if "map" not in self._latest:
            raise RuntimeError("no forward pass recorded since the last pop()")
        return self._latest.pop("map")

    def remove(self) -> None:
        self._handle.remove()
