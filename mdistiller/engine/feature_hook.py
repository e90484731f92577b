"""Replacing one of a model's ``feats`` inside its forward pass, without editing the model.

FreeKD's stage 1 (and any method that plugs something into the teacher) must substitute a stage
output F by g(F) so that everything after the stage sees g(F). `locate_features` finds where
to hook by one probe forward that records every submodule call:

1. a submodule (called once) whose output, or an element of its output tuple, *is* F: a forward
   hook replaces that output (CIFAR ResNets' ``layerN``, WRN's ``blockN``, ShuffleNets, MobileNetV2);
2. a submodule whose output G gives F through a functional ReLU (``F = relu(G)``, VGG's blocks, the
   last BN of a MobileNetV1 stage): the hook returns g(relu(G)) in place of G, and the model's own
   ReLU then applies to it (a no-op where g(F) >= 0);
3. a submodule whose positional input *is* F (the first consumer, e.g. the next stage's first block or
   the average pool of the torchvision-style ImageNet ResNet): a forward pre-hook replaces the input.

Producers (1, 2) must finish before any submodule receives F, and a value changed in place after the
hook would have run is not taken. Each candidate is accepted only if it *cuts* the graph: with
g = detach, the logits must no longer depend on the input image, i.e. every path from the image to the logits goes through the replaced
value. The first candidate that cuts is used; if none does, a ConfigError names the model and stage.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mdistiller.errors import ConfigError

__all__ = ["FeatureSite", "locate_features", "replace_feature"]


@dataclass(frozen=True)
class FeatureSite:
    """Where a feature can be replaced: the output (or input) of the submodule ``module_name``.

    ``position``: index in the output tuple / positional arguments, None when the output is the
    tensor itself. ``relu_after``: the feature is ``relu`` of that output (case 2 above).
    """

    module_name: str
    kind: str  # "output" or "input"
    position: Optional[int]
    relu_after: bool = False


def _tensors(value) -> List[Tuple[Optional[int], Tensor]]:
    if isinstance(value, Tensor):
        return [(None, value)]
    if isinstance(value, (tuple, list)):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, Tensor)]
    return []


def replace_feature(model: nn.Module, site: FeatureSite, fn: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Install a hook that replaces the feature at `site` by ``fn(feature)``; remove it with the handle."""
    module = model.get_submodule(site.module_name)
    if site.kind == "output":
        def output_hook(_module, _args, output):
            value = output if site.position is None else output[site.position]
            new = fn(F.relu(value) if site.relu_after else value)
            if site.position is None:
                return new
            items = list(output)
            items[site.position] = new
            return tuple(items) if isinstance(output, tuple) else items

        return module.register_forward_hook(output_hook)

    def input_hook(_module, args):
        items = list(args)
        items[site.position] = fn(items[site.position])
        return tuple(items)

    return module.register_forward_pre_hook(input_hook)


def _snapshot(value) -> List[Tuple[Optional[int], Tensor, Tensor]]:
    """(position, tensor, copy of its current values): later in-place changes show up as differences."""
    return [(position, tensor, tensor.clone()) for position, tensor in _tensors(value)]


def _record_calls(model: nn.Module, image: Tensor):
    """Run `model` once; returns its features and, for the submodules called exactly once, their
    outputs (outermost first) and inputs (in call order) as (name, event number, snapshot)."""
    outputs: List[Tuple[str, int, list]] = []
    inputs: List[Tuple[str, int, list]] = []
    handles = []

    def record(events, name, value):
        events.append((name, len(outputs) + len(inputs), _snapshot(value)))

    for name, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(lambda _m, args, name=name: record(inputs, name, args)))
        handles.append(module.register_forward_hook(lambda _m, _args, out, name=name: record(outputs, name, out)))
    try:
        _, feats = model(image)
    finally:
        for handle in handles:
            handle.remove()
    counts: Dict[str, int] = {}
    for name, _, _ in inputs:
        counts[name] = counts.get(name, 0) + 1
    once = lambda events: [event for event in events if counts[event[0]] == 1]  # noqa: E731
    return feats, once(outputs)[::-1], once(inputs)


def _candidates(target: Tensor, outputs, inputs) -> List[FeatureSite]:
    """Sites in order of preference. A producer must finish before the feature's first module use, and
    a value changed in place after its hook ran (the hook would not see the final value) is skipped."""
    consumers = []
    for name, _, snapshot in inputs:
        for position, tensor, values in snapshot:
            if tensor is target and torch.equal(values, target):
                consumers.append(FeatureSite(name, "input", position))
    first_use = min((event for name, event, snapshot in inputs if any(t is target for _, t, _ in snapshot)),
                    default=None)
    producers, relu_producers = [], []
    for name, event, snapshot in outputs:
        if first_use is not None and event > first_use:
            continue
        for position, tensor, values in snapshot:
            if tensor is target and torch.equal(values, target):
                producers.append(FeatureSite(name, "output", position))
            elif values.shape == target.shape and torch.equal(F.relu(values), target):
                relu_producers.append(FeatureSite(name, "output", position, relu_after=True))
    return producers + relu_producers + consumers


def _cuts(model: nn.Module, site: FeatureSite, image: Tensor) -> bool:
    """True when replacing the feature by a detached copy leaves the logits independent of the image."""
    handle = replace_feature(model, site, lambda feature: feature.detach())
    try:
        x = image.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)[0]
        if not logits.requires_grad:
            return True
        (grad,) = torch.autograd.grad(logits.sum(), x, allow_unused=True)
        return grad is None or not bool(grad.any())
    finally:
        handle.remove()


def locate_features(model: nn.Module, indices: Sequence[int], image_size: int,
                    key: str = "feats") -> List[FeatureSite]:
    """The hook sites through which ``model(x)[1][key][i]`` can be replaced, for each i in `indices`."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, image_size, image_size, generator=generator).to(device)
    was_training = model.training
    model.eval()
    sites = []
    try:
        with torch.no_grad():
            feats, outputs, inputs = _record_calls(model, image)
        for index in indices:
            found = next((site for site in _candidates(feats[key][index], outputs, inputs)
                          if _cuts(model, site, image)), None)
            if found is None:
                raise ConfigError(
                    f"Cannot plug into {type(model).__name__}'s {key}[{index}]: no submodule produces or consumes it "
                    "on every path to the logits; distil other stages (fewer NUM_STAGES) or use another teacher."
                )
            sites.append(found)
    finally:
        model.train(was_training)
    return sites
