"""Any timm or torchvision classifier behind the library's model contract.

Every model of the zoo returns ``logits, feats = model(x)`` with ``feats["feats"]`` the stage maps
(N, C, H, W) and ``feats["pooled_feat"]`` the (N, D) vector its classifier sees, and answers
``get_stage_channels()``. The two adapters here give a model built elsewhere the same contract:

- :class:`TimmFeatureModel` calls timm's ``forward_intermediates`` once (stage maps in NCHW, prefix
  tokens dropped, Swin's NHWC already permuted by timm) and ``forward_head`` on its final output, for
  the logits and, with ``pre_logits=True``, the pooled vector: one forward pass gives all three.
  CaiT and XCiT add their class token after the tapped blocks: their taps have no prefix tokens.
- :class:`HookedFeatureModel` runs the model's own ``forward`` and records the outputs of named
  modules with forward hooks (torchvision models, or any timm model without
  ``forward_intermediates``), and the classifier's input with a pre-hook on its last linear layer.
  A token sequence (N, L, C) becomes a map by dropping the prefix tokens (class, distillation,
  register) and reshaping the rest row-major to its square grid; an NHWC map (timm's and
  torchvision's Swin) is detected from the probe's shapes and permuted.

What a model of another kind cannot give — pre-activation maps, the BatchNorm before each stage's
ReLU — raises :class:`~mdistiller.errors.IncompatibleModelError` naming what is missing, so a
method that needs it refuses at build time in one line.
"""

import inspect
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mdistiller.errors import IncompatibleModelError

__all__ = ["TimmFeatureModel", "HookedFeatureModel", "tokens_to_map", "evenly_spaced", "is_channels_last"]


def evenly_spaced(count: int, taps: int = 4) -> List[int]:
    """Indices of ``taps`` blocks spread evenly over ``count``, the last block always included.

    A ViT or Mixer has one tap per block; four evenly spaced ones stand in for a CNN's four stages
    (12 blocks: 2, 5, 8, 11).
    """
    if count <= taps:
        return list(range(count))
    return [math.ceil(count * (i + 1) / taps) - 1 for i in range(taps)]


def tokens_to_map(tokens: Tensor, num_prefix_tokens: Optional[int] = None) -> Tensor:
    """(N, L, C) tokens -> (N, C, H, W): prefix tokens dropped, the rest a row-major square grid.

    ``num_prefix_tokens`` None infers it as what is left over the largest square grid that fits.
    """
    n, length, channels = tokens.shape
    if num_prefix_tokens is None:
        num_prefix_tokens = length - math.isqrt(length) ** 2
    side = math.isqrt(length - num_prefix_tokens)
    if side * side != length - num_prefix_tokens:
        raise IncompatibleModelError(
            f"{length - num_prefix_tokens} patch tokens do not form a square grid; "
            "name the taps of a non-square model with MODEL.STUDENT_FEATURES / MODEL.TEACHER_FEATURES"
        )
    grid = tokens[:, num_prefix_tokens:, :].reshape(n, side, side, channels)
    return grid.permute(0, 3, 1, 2)


def is_channels_last(shape: Sequence[int], hint: bool = False) -> bool:
    """Whether a 4-D tap of ``shape`` is (N, H, W, C), from a square image's square grid: (N, A, A, C)
    with C != A is channels-last, (N, C, A, A) with C != A channels-first; where both read the same
    (C == A, or no two sizes equal) ``hint`` decides (timm's ``output_fmt``, torchvision's Swin)."""
    _, a, b, c = shape
    if a == b != c:
        return True
    if b == c != a:
        return False
    return hint


class _AdaptedModel(nn.Module):
    """What both adapters share: the wrapped model, stage channels and the refusals."""

    def __init__(self, model: nn.Module, name: str, kind: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.kind = kind  # "cnn", or "token" for a transformer / MLP (ViT, DeiT, Swin, Mixer, ResMLP)
        self.stage_channels: List[int] = []

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.Module]:
        raise IncompatibleModelError(
            f"{self.name} has no BatchNorm before a ReLU at its stage ends "
            "(only the CIFAR / ImageNet zoo models expose them)"
        )

    def probe(self, image_size: int) -> None:
        """Record the stage channels from one forward pass on a zero image (no gradient)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                _, feats = self(torch.zeros(1, 3, image_size, image_size))
        except RuntimeError as err:  # sizes fixed at construction (EfficientFormer's 7x7 attention biases)
            default = getattr(self.model, "pretrained_cfg", {}).get("input_size", (0, "its own"))[-1]
            raise IncompatibleModelError(
                f"{self.name} does not run at {image_size} px ({str(err).splitlines()[0]}): set "
                f"DATASET.IMAGE_SIZE to {default}, or pick a model that takes this size"
            ) from err
        finally:
            self.train(was_training)
        self.stage_channels = [f.shape[1] for f in feats["feats"]]


class TimmFeatureModel(_AdaptedModel):
    """A timm model with ``forward_intermediates``: stage maps, pooled vector and logits in one pass.

    ``indices`` picks the taps (a list of timm's tap indices). Models with one tap per block (ViT,
    DeiT, Mixer, ResMLP) default to four evenly spaced blocks; hierarchical models (ResNet,
    ConvNeXt, Swin, RegNet, EfficientNet) to their last four taps, the four stages (a ResNet's
    stem tap, which ConvNeXt and Swin do not have, is left out: the same four strides everywhere).
    """

    def __init__(self, model: nn.Module, name: str, image_size: int,
                 indices: Optional[Sequence[int]] = None) -> None:
        token = hasattr(model, "patch_embed") or per_block_model(model)  # ViT / Swin, or Mixer (its "stem")
        super().__init__(model, name, "token" if token else "cnn")
        if indices is None:
            num_taps = len(model.feature_info)
            indices = evenly_spaced(num_taps) if per_block_model(model) else list(range(num_taps))[-4:]
        self.indices = list(indices)
        # CaiT / XCiT: class token joined after the tapped blocks, forward_intermediates cannot return it
        self.prefix_taps = getattr(model, "num_prefix_tokens", 0) > 0 and \
            "return_prefix_tokens" in inspect.signature(model.forward_intermediates).parameters
        self.probe(image_size)

    def forward(self, x: Tensor) -> Tuple[Tensor, Dict[str, object]]:
        """``feats`` also holds ``"prefix"`` (per tap, the (N, P, C) class / distillation / register
        tokens) for a model with prefix tokens, and ``"head_logits"`` (class-token head,
        distillation-token head) for a DeiT distilled model, whose ``logits`` are their average."""
        with_prefix = self.prefix_taps
        if with_prefix:
            final, taps = self.model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW",
                                                           return_prefix_tokens=True)
            maps, prefix = [tap[0] for tap in taps], [tap[1] for tap in taps]
        else:
            final, maps = self.model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW")
        logits, pooled, head_logits = self.head(final)
        feats: Dict[str, object] = {"feats": list(maps), "pooled_feat": pooled}
        if with_prefix:
            feats["prefix"] = prefix
        if head_logits is not None:
            feats["head_logits"] = head_logits
        return logits, feats

    def head(self, final: Tensor) -> Tuple[Tensor, Tensor, Optional[Tuple[Tensor, Tensor]]]:
        """(logits, pre-logit vector, a DeiT distilled model's two heads' logits or None) of the
        model's ``forward_head`` on its final features ``final``."""
        pooled = self.model.forward_head(final, pre_logits=True)
        if hasattr(self.model, "dist_token"):  # DeiT distilled: token 0 -> head, token 1 -> head_dist
            cls_logits = self.model.head(self.model.head_drop(final[:, 0]))
            dist_logits = self.model.head_dist(self.model.head_drop(final[:, 1]))
            return (cls_logits + dist_logits) / 2, pooled, (cls_logits, dist_logits)
        if hasattr(self.model, "head_dist"):  # LeViT distilled: both heads on the pooled vector, averaged
            return (self.model.head(pooled) + self.model.head_dist(pooled)) / 2, pooled, None
        # timm's head after pre_logits is the classifier alone: apply it once
        return self.model.get_classifier()(pooled), pooled, None

    @torch.no_grad()
    def final_shape(self, image_size: int) -> Tuple[int, ...]:
        """The shape of one image's final features (what ``forward_head`` takes): (L, C) tokens,
        (C, H, W) or, for a channels-last model (Swin), (H, W, C); one probe forward in eval mode."""
        param = next(self.model.parameters())
        was_training = self.training
        self.eval()
        try:
            image = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
            final, _ = self.model.forward_intermediates(image, indices=self.indices[-1:], output_fmt="NCHW")
        finally:
            self.train(was_training)
        return tuple(final.shape[1:])

    def head_from_pooled(self, pooled: Tensor, final_shape: Sequence[int]) -> Tensor:
        """The logits of the model's head after its global pooling, norms included (ConvNeXt's
        LayerNorm, a ViT's ``fc_norm``, DeiT's two heads), on a pooled (N, C) vector: ``forward_head``
        on the vector spread over every position of features shaped ``final_shape``
        (:meth:`final_shape`), so that whatever the model pools (class token, mean of the patch
        tokens, a map's mean) is the vector itself. C must be the final features' channel count."""
        n, c = pooled.shape
        if len(final_shape) == 2:  # (L, C) tokens
            final = pooled[:, None, :].expand(n, final_shape[0], c)
        elif self._final_channels_last(final_shape):
            final = pooled[:, None, None, :].expand(n, final_shape[0], final_shape[1], c)
        else:
            final = pooled[:, :, None, None].expand(n, c, final_shape[1], final_shape[2])
        return self.head(final)[0]

    def final_channels(self, final_shape: Sequence[int]) -> int:
        """The channel count of final features shaped ``final_shape`` (:meth:`final_shape`)."""
        if len(final_shape) == 2 or self._final_channels_last(final_shape):
            return final_shape[-1]
        return final_shape[0]

    def _final_channels_last(self, final_shape: Sequence[int]) -> bool:
        return is_channels_last((1, *final_shape), getattr(self.model, "output_fmt", "NCHW") == "NHWC")


def per_block_model(model: nn.Module) -> bool:
    """True for a model whose every tap has the same stride (ViT, Mixer): a token model."""
    infos = getattr(model, "feature_info", [])
    return len(infos) > 1 and all(info["reduction"] == infos[0]["reduction"] for info in infos)


def last_linear(model: nn.Module) -> Optional[Tuple[str, nn.Linear]]:
    """(name, module) of the model's last linear layer, its classifier; None when it has none."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _last_linear(model: nn.Module) -> Tuple[str, nn.Linear]:
    found = last_linear(model)
    if found is None:
        raise IncompatibleModelError("the model has no linear classifier to read its pooled feature from")
    return found


class HookedFeatureModel(_AdaptedModel):
    """Any classifier: its own forward, stage maps from forward hooks on the named modules.

    ``feature_modules`` are module paths (``layer1``, ``features.3``, ``encoder.layers.encoder_layer_5``).
    ``num_prefix_tokens`` is the count of class / distillation tokens in a token model's sequences
    (None: inferred from the square grid). Whether a 4-D tap is NHWC is detected per tap from the
    probe's shape (:func:`is_channels_last`); ``channels_last_maps`` (torchvision's Swin, a timm model
    whose ``output_fmt`` is NHWC) decides only where the shape cannot. ``kind`` is "cnn" or "token"
    (a transformer or MLP). The pooled feature is the input of the last linear layer.
    """

    def __init__(self, model: nn.Module, name: str, image_size: int, feature_modules: Sequence[str],
                 kind: str = "cnn", num_prefix_tokens: Optional[int] = None,
                 channels_last_maps: Optional[bool] = None) -> None:
        super().__init__(model, name, kind)
        modules = dict(model.named_modules())
        missing = [m for m in feature_modules if m not in modules]
        if missing:
            raise IncompatibleModelError(
                f"{name} has no module {', '.join(missing)}; module names look like: "
                f"{', '.join(list(n for n in modules if n)[:12])}, ..."
            )
        self.feature_modules = list(feature_modules)
        self.classifier_name, _ = _last_linear(model)
        self.num_prefix_tokens = num_prefix_tokens
        if channels_last_maps is None:
            channels_last_maps = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.channels_last_maps = channels_last_maps
        self.channels_last: Dict[str, bool] = {}  # per 4-D tap, decided on the probe's shapes
        self.probe(image_size)

    def _as_map(self, path: str, tap: Tensor) -> Tensor:
        if tap.dim() == 3:
            return tokens_to_map(tap, self.num_prefix_tokens)
        if tap.dim() != 4:
            raise IncompatibleModelError(
                f"{self.name}'s module {path} gives a {tap.dim()}-D output {tuple(tap.shape)}, not a map "
                "or a token sequence: name another module in MODEL.STUDENT_FEATURES / MODEL.TEACHER_FEATURES"
            )
        if path not in self.channels_last:
            self.channels_last[path] = is_channels_last(tap.shape, self.channels_last_maps)
        return tap.permute(0, 3, 1, 2) if self.channels_last[path] else tap

    def forward(self, x: Tensor) -> Tuple[Tensor, Dict[str, object]]:
        """``feats`` also holds ``"prefix"``, each tap's (N, P, C) prefix tokens, for a token model
        with ``num_prefix_tokens`` set (torchvision's ViT: the class token)."""
        # Hooks live for one call only: a copy of this module (the fast teacher, EMA) has none to share.
        recorded: Dict[str, Tensor] = {}
        pooled: List[Tensor] = []

        def record(path: str):
            def hook(module: nn.Module, args, output) -> None:
                recorded[path] = output[0] if isinstance(output, (tuple, list)) else output
            return hook

        handles = [self.model.get_submodule(path).register_forward_hook(record(path))
                   for path in self.feature_modules]
        handles.append(self.model.get_submodule(self.classifier_name).register_forward_pre_hook(
            lambda module, args: pooled.append(args[0])))
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        taps = [recorded[path] for path in self.feature_modules]
        feats: Dict[str, object] = {"feats": [self._as_map(path, tap) for path, tap in zip(self.feature_modules, taps)],
                                    "pooled_feat": torch.flatten(pooled[-1], 1)}
        if self.num_prefix_tokens and all(tap.dim() == 3 for tap in taps):
            feats["prefix"] = [tap[:, :self.num_prefix_tokens] for tap in taps]
        return logits, feats
