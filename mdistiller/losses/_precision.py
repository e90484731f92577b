"""Running a loss in float32 under mixed precision."""

import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _device_type(values) -> str:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)) and value:
            found = _device_type(value)
            if found:
                return found
    return ""


def float32_loss(fn: F) -> F:
    """Decorator: half-precision tensor arguments (also inside lists) go to float32, autocast is off.

    Similarity matrices, SVDs and normalisations lose most of their digits in bfloat16; in full
    precision runs this changes nothing (the casts are no-ops).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = _device_type(list(args) + list(kwargs.values())) or "cpu"
        with torch.autocast(device_type, enabled=False):
            args = tuple(_to_float32(a) for a in args)
            kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
