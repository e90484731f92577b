"""The speed switches of a run, resolved for its device: channels_last, the fast teacher, torch.compile.

Autocast is resolved by :func:`mdistiller.engine.utils.autocast_dtype` (SOLVER.AMP). Defaults, as
measured (docs/performance.md): SOLVER.CHANNELS_LAST "auto" is on on the CPU (oneDNN prefers NHWC,
in float32 as in bfloat16) and on CUDA when autocast is on (tensor cores); SOLVER.FAST_TEACHER is
on; SOLVER.COMPILE is off (minutes of compilation for a short run, and a C++ toolchain on the CPU);
with it on, the training loader drops its last partial batch (mdistiller/dataset/loaders.py), whose
other shape would compile the student a second time.
"""

from typing import Optional, Union

import torch
from torch import nn

from mdistiller.dataset.fast_aug import InMemoryLoader
from mdistiller.engine.fast_teacher import InferenceTeacher

__all__ = ["channels_last_enabled", "compile_student", "place_loader", "prepare_distiller"]


def channels_last_enabled(setting: Union[bool, str], device: torch.device, amp_dtype: Optional[torch.dtype]) -> bool:
    """SOLVER.CHANNELS_LAST resolved: "auto" is on on the CPU, and on CUDA under autocast."""
    if setting == "auto":
        return device.type == "cpu" or (device.type == "cuda" and amp_dtype is not None)
    return bool(setting)


def prepare_distiller(distiller: nn.Module, solver, device: torch.device, channels_last: bool) -> nn.Module:
    """Move `distiller` to `device` and apply the fast paths SOLVER asks for; returns it.

    - channels_last: every 4-d parameter and buffer in NHWC memory order (values unchanged);
    - SOLVER.FAST_TEACHER (and the distiller's `fast_teacher`): `teacher_forward` runs a BN-folded
      inference copy of the teacher (the teacher itself, which checkpoints hold, stays as it is);
    - SOLVER.COMPILE: `torch.compile` of that copy (the student is compiled by
      :func:`compile_student`, after the DDP wrap).
    """
    distiller = distiller.to(device)
    if channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    teacher = getattr(distiller, "teacher", None)
    if solver.FAST_TEACHER and teacher is not None and getattr(distiller, "fast_teacher", False):
        distiller.inference_teacher = InferenceTeacher(teacher, channels_last=channels_last,
                                                       compile_model=solver.COMPILE)
    return distiller


def compile_student(distiller: nn.Module, solver) -> None:
    """SOLVER.COMPILE: `torch.compile` of the student, in place (parameter names and checkpoints
    stay the same). Called after the DDP wrap, the order PyTorch documents for DDP with
    torch.compile: its first call, inside DDP's forward, is then split at DDP's bucket boundaries
    (dynamo's DDPOptimizer) so gradient all-reduces overlap the backward pass."""
    if solver.COMPILE:
        distiller.student.compile()


def place_loader(loader, device: torch.device, channels_last: bool = True):
    """An in-memory loader (DATASET.FAST_AUG) moved to `device`, its batches in channels_last
    memory order when `channels_last`; any other loader as it is."""
    return loader.to(device, channels_last=channels_last) if isinstance(loader, InMemoryLoader) else loader
