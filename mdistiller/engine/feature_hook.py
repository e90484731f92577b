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

A feature an adapter made from a submodule's output by a reshape (:mod:`mdistiller.models.adapter`:
timm's ``forward_intermediates``, the hooked adapter) is found by its values in that output, in one of
two layouts besides (N, C, H, W):

- ``NHWC``: the (N, H, W, C) stage output of a Swin (F is its permutation);
- ``NLC``: a token sequence (N, P + H W, C) of a ViT / DeiT block (P prefix tokens: class,
  distillation, register) or a Mixer block (P = 0), whose last H W tokens are F's grid row-major.

The hook then reshapes the tokens to the grid, applies g, and writes the result back into the model's
stream in the stream's layout and dtype; a sequence's prefix tokens pass through untouched.

Producers (1, 2 and the layouts above) must finish before any submodule receives F or the output it
was made from, and a value changed in place after the hook would have run is not taken; a module whose
input already holds F in a layout above (one that is the identity at initialisation, as ResMLP's
Affine norm) is not F's producer. Each
candidate is accepted only if it *cuts* the graph: with g = detach, the logits (and the pooled
feature) must no longer depend on the input image, i.e. every path from the image to the logits goes
through the replaced value. The first candidate that cuts is used; if none does, a ConfigError names
the model and stage.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mdistiller.errors import ConfigError

__all__ = ["FeatureSite", "feature_of", "locate_features", "replace_feature", "written_back"]


@dataclass(frozen=True)
class FeatureSite:
    """Where a feature can be replaced: the output (or input) of the submodule ``module_name``.

    ``position``: index in the output tuple / positional arguments, None when the output is the
    tensor itself. ``relu_after``: the feature is ``relu`` of that output (case 2 above).
    ``layout``: how the value there holds the (N, C, H, W) feature: ``"NCHW"`` (it is the feature),
    ``"NHWC"`` or ``"NLC"`` (tokens: ``num_prefix_tokens`` prefix tokens, then the ``grid`` (H, W)).
    """

    module_name: str
    kind: str  # "output" or "input"
    position: Optional[int]
    relu_after: bool = False
    layout: str = "NCHW"
    num_prefix_tokens: int = 0
    grid: Optional[Tuple[int, int]] = None


def _tensors(value) -> List[Tuple[Optional[int], Tensor]]:
    if isinstance(value, Tensor):
        return [(None, value)]
    if isinstance(value, (tuple, list)):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, Tensor)]
    return []


def feature_of(value: Tensor, site: FeatureSite) -> Tensor:
    """The (N, C, H, W) feature the value at `site` holds (a view, or relu of it)."""
    if site.layout == "NHWC":
        return value.permute(0, 3, 1, 2)
    if site.layout == "NLC":
        height, width = site.grid
        patches = value[:, site.num_prefix_tokens:]
        return patches.reshape(value.shape[0], height, width, value.shape[2]).permute(0, 3, 1, 2)
    return F.relu(value) if site.relu_after else value


def written_back(feature: Tensor, value: Tensor, site: FeatureSite) -> Tensor:
    """The value at `site` holding `feature` (N, C, H, W) instead: in the value's layout and dtype for
    NHWC and NLC, the prefix tokens of a sequence copied unchanged."""
    if site.layout == "NHWC":
        return feature.permute(0, 2, 3, 1).to(value.dtype).contiguous()
    if site.layout == "NLC":
        patches = feature.flatten(2).transpose(1, 2).to(value.dtype)
        return torch.cat([value[:, :site.num_prefix_tokens], patches], dim=1)
    return feature


def replace_feature(model: nn.Module, site: FeatureSite, fn: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Install a hook that replaces the feature at `site` by ``fn(feature)``; remove it with the handle."""
    return _replace_value(model, site, lambda value: written_back(fn(feature_of(value, site)), value, site))


def _replace_value(model: nn.Module, site: FeatureSite, fn: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Install a hook that replaces the whole value at `site` (prefix tokens included) by ``fn(value)``."""
    module = model.get_submodule(site.module_name)
    if site.kind == "output":
        def output_hook(_module, _args, output):
            value = output if site.position is None else output[site.position]
            new = fn(value)
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


def _layout_of(tensor: Tensor, values: Tensor, target: Tensor) -> Optional[dict]:
    """How `tensor` (current `values`) holds `target` (N, C, H, W), as FeatureSite fields; None if it does not."""
    if tensor is target and torch.equal(values, target):
        return {}
    n, channels, height, width = target.shape
    if values.shape == (n, height, width, channels) and torch.equal(values.permute(0, 3, 1, 2), target):
        return {"layout": "NHWC"}
    if values.dim() == 3 and values.shape[0] == n and values.shape[2] == channels and \
            values.shape[1] >= height * width:
        site = {"layout": "NLC", "num_prefix_tokens": values.shape[1] - height * width, "grid": (height, width)}
        if torch.equal(feature_of(values, FeatureSite("", "output", None, **site)), target):
            return site
    return None


def _first_use(inputs, tensor: Tensor) -> Optional[int]:
    """The event number of the first submodule call that receives `tensor`, None when none does."""
    return min((event for _, event, snapshot in inputs if any(t is tensor for _, t, _ in snapshot)), default=None)


def _candidates(target: Tensor, outputs, inputs) -> List[FeatureSite]:
    """Sites in order of preference. A producer must finish before the feature's (or its value's)
    first module use, and a value changed in place after its hook ran (the hook would not see the
    final value) is skipped."""
    consumers = []
    for name, _, snapshot in inputs:
        for position, tensor, values in snapshot:
            layout = _layout_of(tensor, values, target)
            if layout is not None:
                consumers.append(FeatureSite(name, "input", position, **layout))
    first_use = _first_use(inputs, target)
    received = {name: snapshot for name, _, snapshot in inputs}
    producers, relu_producers = [], []
    for name, event, snapshot in outputs:
        if first_use is not None and event > first_use:
            continue
        for position, tensor, values in snapshot:
            layout = _layout_of(tensor, values, target)
            tensor_use = _first_use(inputs, tensor)
            if layout and any(_layout_of(t, v, target) is not None for _, t, v in received.get(name, [])):
                continue  # a module that is the identity on the feature (an identity-initialised norm) did not make it
            if layout is not None and (tensor_use is None or event <= tensor_use):
                producers.append(FeatureSite(name, "output", position, **layout))
            elif values.shape == target.shape and torch.equal(F.relu(values), target):
                relu_producers.append(FeatureSite(name, "output", position, relu_after=True))
    return producers + relu_producers + consumers


def _cuts(model: nn.Module, site: FeatureSite, image: Tensor) -> bool:
    """True when replacing the value at `site` by a detached copy leaves the logits and the pooled
    feature (``feats["pooled_feat"]``, where the model gives one) independent of the image. The pooled
    feature counts because a zero-initialised head (timm's Mixer) makes the logits constant."""
    handle = _replace_value(model, site, lambda value: value.detach())
    try:
        x = image.clone().requires_grad_(True)
        with torch.enable_grad():
            logits, feats = model(x)
            outputs = [logits] + ([feats["pooled_feat"]] if isinstance(feats, dict) and "pooled_feat" in feats else [])
            for output in outputs:
                if not output.requires_grad:
                    continue
                (grad,) = torch.autograd.grad(output.sum(), x, allow_unused=True, retain_graph=True)
                if grad is not None and bool(grad.any()):
                    return False
        return True
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
