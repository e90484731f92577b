"""Small helpers of the training loop: meters, accuracy, seeding, devices."""

import contextlib
import os
import random
from typing import ContextManager, Dict, List, Optional, Sequence

import numpy as np
import torch
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

AMP_DTYPES = ("bfloat16", "float16")


class AverageMeter:
    """Running sum and count of a value; `avg` is their ratio."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> torch.Tensor:
    """Top-k accuracies in percent as a float64 tensor on `output`'s device (nothing read to the
    host); k larger than the number of classes counts as every class."""
    with torch.no_grad():
        maxk = min(max(topk), output.size(1))
        _, pred = output.topk(maxk, 1, True, True)
        correct = pred.t().eq(target.reshape(1, -1))
        return torch.stack([correct[: min(k, maxk)].any(0).float().mean().double() * 100.0 for k in topk])


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """Top-k accuracies in percent (:func:`topk_accuracy` read to the host)."""
    return topk_accuracy(output, target, topk).tolist()


def configure_kernels(deterministic: bool) -> None:
    """Kernel choice of a run (EXPERIMENT.DETERMINISTIC): deterministic kernels and no cuDNN
    autotuning when `deterministic`, else cuDNN's autotuner (`cudnn.benchmark`) picks the fastest."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def seed_everything(seed: int, deterministic: Optional[bool] = None) -> None:
    """Seed Python, NumPy and torch (every device). With `deterministic` True or False, also set
    the kernel choice (:func:`configure_kernels`); None, as in the trainer's per-epoch reseed,
    leaves it as the run set it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic is not None:
        configure_kernels(deterministic)


def rng_state(device: Optional[torch.device] = None) -> Dict[str, object]:
    """The RNG states of the process as tensors and plain data (weights-only loadable): Python,
    NumPy, torch's CPU generator and, when `device` is a GPU, that GPU's generator only (the
    device a trainer owns; a resume on another number of GPUs then restores the same state)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, object], device: Optional[torch.device] = None) -> None:
    """Restore what :func:`rng_state` saved; a GPU state goes to `device` (a GPU) only.

    Checkpoints written before hold a list with every visible GPU's state: `device` takes the
    entry of its own index when the list has one, and keeps its state otherwise.
    """
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; any other name is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where CPU autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether GPU `device` computes bfloat16 in hardware: compute capability 8.0 (Ampere) and up,
    or any ROCm GPU. ``torch.cuda.is_bf16_supported()`` also counts emulation (V100, T4), which is
    slower than float16 with the grad scaler."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast_dtype(device: torch.device, solver: CN) -> Optional[torch.dtype]:
    """The autocast dtype SOLVER.AMP / SOLVER.AMP_DTYPE ask for on `device`, or None for full precision.

    SOLVER.AMP is True, False or "auto": on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 or
    AMX). CPU autocast runs in bfloat16 whatever AMP_DTYPE says; CUDA takes bfloat16 or float16,
    and "auto" falls back to float16 (with the grad scaler) on GPUs without native bfloat16
    (:func:`cuda_has_native_bf16`: compute capability below 8.0).
    """
    auto = solver.AMP == "auto"
    if auto:
        enabled = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    else:
        enabled = bool(solver.AMP)
    if not enabled:
        return None
    if solver.AMP_DTYPE not in AMP_DTYPES:
        raise ConfigError(f"SOLVER.AMP_DTYPE must be bfloat16 or float16, got '{solver.AMP_DTYPE}'.")
    if device.type == "cpu":
        return torch.bfloat16
    if auto and solver.AMP_DTYPE == "bfloat16" and device.type == "cuda" and not cuda_has_native_bf16(device):
        return torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[solver.AMP_DTYPE]


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """`torch.autocast` on `device` in `dtype`, or a no-op context when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
