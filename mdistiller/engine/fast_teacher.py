"""The frozen teacher's fast path: an inference copy with BatchNorm folded into its convolutions.

A BatchNorm in eval mode is an affine map per channel, so when it reads a convolution's output and
nothing else reads that output, ``bn(conv(x)) == conv'(x)`` with ``W' = W * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` (Ioffe & Szegedy 2015, Sec. 3; torch's
``fuse_conv_bn_eval``). :func:`fold_batchnorm` finds such pairs by running the model once with
hooks, folds them on a copy and checks the copy's outputs against the original's; the original
teacher (what checkpoints hold) is never touched. :class:`InferenceTeacher` runs that copy under
``torch.inference_mode`` and hands back ordinary tensors, rebuilding the copy whenever the
teacher's own tensors change (a resumed checkpoint, a move to another device).
"""

import contextlib
import copy
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["InferenceTeacher", "fold_batchnorm", "full_fp32_precision", "max_relative_difference"]

# Folding changes results only by rounding; a larger difference means a conv output was read twice.
FOLD_CHECK_TOLERANCE = 1e-3


def _tensors(tree: Any) -> List[Tensor]:
    """Every tensor in a nest of tuples, lists and dicts, in a fixed order."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in tree for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def _map_tensors(tree: Any, fn) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((key, _map_tensors(value, fn)) for key, value in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map_tensors(item, fn) for item in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(item, fn) for item in tree)
    return tree


def max_relative_difference(a: Any, b: Any) -> float:
    """Largest ``max|x - y| / max|x|`` over the tensors of two outputs of the same structure."""
    worst = 0.0
    xs, ys = _tensors(a), _tensors(b)
    if len(xs) != len(ys):
        return float("inf")
    for x, y in zip(xs, ys):
        if x.shape != y.shape:
            return float("inf")
        x, y = x.detach().double(), y.detach().double()
        scale = x.abs().max().clamp_min(1e-12) if x.numel() else 1.0
        worst = max(worst, float((x - y).abs().max() / scale) if x.numel() else 0.0)
    return worst


# The backends whose float32 convolutions and matrix products may run in a lower precision: TF32 on
# CUDA (cuDNN's convolutions use it by default), bfloat16 in oneDNN when asked for.
_FP32_PRECISION_BACKENDS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


@contextlib.contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Float32 convolutions and matrix products in full IEEE precision inside the block (TF32 off:
    ``torch.backends.cuda.matmul`` and ``cudnn.conv`` at ``fp32_precision = "ieee"``, the setting
    that replaces ``allow_tf32`` since torch 2.9; ``allow_tf32 = False`` before). Each setting is
    restored after, also on an error."""
    settings = []  # (object, attribute, value to restore)
    for path in _FP32_PRECISION_BACKENDS:
        backend = torch.backends
        for part in path.split("."):
            backend = getattr(backend, part, None)
        if backend is not None and hasattr(backend, "fp32_precision"):
            settings.append((backend, "fp32_precision", "ieee"))
    if not settings:  # torch before 2.9
        settings = [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]
    saved = [(backend, name, getattr(backend, name)) for backend, name, _ in settings]
    try:
        for backend, name, value in settings:
            setattr(backend, name, value)
        yield
    finally:
        for backend, name, value in saved:
            setattr(backend, name, value)


def _conv_bn_pairs(model: nn.Module, example: Tensor) -> List[Tuple[str, str]]:
    """(conv name, BN name) pairs where, in a forward pass on `example`, every call of the BN reads
    the output of a call of that conv and every output of that conv goes to that BN."""
    names = {module: name for name, module in model.named_modules()}
    conv_outputs: Dict[int, Tuple[str, Tensor]] = {}
    conv_calls: Dict[str, int] = {}
    bn_inputs: Dict[str, List[Optional[str]]] = {}
    keep: List[Tensor] = []  # holds every recorded tensor alive so no id() is reused

    def after_conv(module, inputs, output):
        name = names[module]
        conv_calls[name] = conv_calls.get(name, 0) + 1
        conv_outputs[id(output)] = (name, output)
        keep.append(output)

    def before_bn(module, inputs):
        source = conv_outputs.get(id(inputs[0]))
        bn_inputs.setdefault(names[module], []).append(
            source[0] if source is not None and source[1] is inputs[0] else None
        )

    handles = []
    for module in model.modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv))
        elif type(module) is nn.BatchNorm2d and module.track_running_stats and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()

    pairs, used_convs = [], set()
    for bn_name, sources in bn_inputs.items():
        conv_name = sources[0]
        if conv_name is None or any(s != conv_name for s in sources) or conv_name in used_convs:
            continue
        if conv_calls.get(conv_name) != len(sources):
            continue
        used_convs.add(conv_name)
        pairs.append((conv_name, bn_name))
    return pairs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """`fuse_conv_bn_eval` computed in float64, returned in the conv's dtype."""
    dtype = conv.weight.dtype
    fused = fuse_conv_bn_eval(copy.deepcopy(conv).double().eval(), copy.deepcopy(bn).double().eval())
    return fused.to(dtype)


def _fold_in_place(model: nn.Module, pairs: Sequence[Tuple[str, str]]) -> List[Tuple[str, nn.Module]]:
    """Fold `pairs` into `model`; returns what :func:`_restore` needs to undo it."""
    undo = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        undo += [(conv_name, conv), (bn_name, bn)]
        _replace(model, conv_name, _fold(conv, bn))
        _replace(model, bn_name, nn.Identity())
    return undo


def _restore(model: nn.Module, undo: List[Tuple[str, nn.Module]]) -> None:
    for name, module in reversed(undo):
        _replace(model, name, module)


def fold_batchnorm(model: nn.Module, example: Tensor) -> Tuple[nn.Module, int]:
    """An eval-mode copy of `model` with BatchNorm folded into the convolutions that feed it.

    Returns the copy and the number of folded pairs. Each candidate pair is kept only if the
    copy's outputs on `example` (float32) stay those of the model up to rounding: a conv output
    that is also read elsewhere (e.g. returned as a feature, like a WRN stem) keeps its BN. The
    check runs in full float32 precision (:func:`full_fp32_precision`): under cuDNN's default
    TF32 the rounding of a deep network alone can exceed the tolerance.
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    example = example.float()
    with torch.autocast(example.device.type, enabled=False), torch.no_grad(), full_fp32_precision():
        pairs = _conv_bn_pairs(folded, example)
        reference = folded(example)

        def changes_outputs() -> bool:
            return max_relative_difference(reference, folded(example)) > FOLD_CHECK_TOLERANCE

        undo = _fold_in_place(folded, pairs)
        if pairs and changes_outputs():
            _restore(folded, undo)
            kept = []
            for pair in pairs:
                single = _fold_in_place(folded, [pair])
                if changes_outputs():
                    _restore(folded, single)
                else:
                    kept.append(pair)
            pairs = kept
            if changes_outputs():  # each fold is exact alone, so together too; kept as a guard
                warnings.warn("Teacher BatchNorm folding changed its outputs; running the teacher unfolded.",
                              stacklevel=2)
                return copy.deepcopy(model).eval().requires_grad_(False), 0
    return folded, len(pairs)


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class InferenceTeacher:
    """Runs a frozen teacher through its BN-folded copy under ``torch.inference_mode``.

    Not an ``nn.Module``: the copy is no child of the distiller, so it never reaches
    ``state_dict``, the optimizer or DDP. Falls back to the teacher itself (under ``no_grad``) when
    the teacher is in train mode or has forward hooks, since those need the real modules.
    """

    def __init__(self, teacher: nn.Module, channels_last: bool = False, compile_model: bool = False) -> None:
        self.teacher = teacher
        self.channels_last = channels_last
        self.compile_model = compile_model
        self.model: Optional[nn.Module] = None
        self.folded_pairs = 0
        self._key: Optional[tuple] = None

    def _tensor_key(self) -> tuple:
        tensors = list(self.teacher.parameters()) + list(self.teacher.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def applies(self) -> bool:
        """Whether the copy may stand for the teacher now (eval mode, no hooks on its modules)."""
        return not self.teacher.training and not _has_hooks(self.teacher)

    def build(self, example: Tensor) -> None:
        """(Re)build the folded copy from the teacher's current tensors, checked on `example`."""
        self.model, self.folded_pairs = fold_batchnorm(self.teacher, example[:4])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.compile_model:
            self.model.compile()
        self._key = self._tensor_key()

    def __call__(self, image: Tensor) -> Any:
        if not self.applies():
            with torch.no_grad():
                return self.teacher(image)
        if self.model is None or self._tensor_key() != self._key:
            self.build(image)
        with torch.inference_mode():
            output = self.model(image)
        # Inference tensors cannot be saved for backward: hand back ordinary copies (one per tensor,
        # so a tensor listed twice, like feats[0] and preact_feats[0], stays one tensor).
        copies: Dict[int, Tensor] = {}

        def clone_once(tensor: Tensor) -> Tensor:
            if id(tensor) not in copies:
                copies[id(tensor)] = tensor.clone()
            return copies[id(tensor)]

        return _map_tensors(output, clone_once)
