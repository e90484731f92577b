"""Checkpoint files: written atomically, read with weights-only unpickling.

A checkpoint is a plain dict of tensors, numbers and strings, so
`torch.load(path, weights_only=True)` reads it and a file carrying pickled code is refused, never
executed.
"""

import os
import pickle
import re
import tempfile
import zipfile
from typing import Any, Dict

import torch

from mdistiller.errors import CheckpointError

# How torch's weights-only unpickler names an object it refuses to build.
UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
# Name prefix of the temporary file a write goes to before its rename.
TMP_PREFIX = ".tmp_"


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    """Write `obj` to `path` atomically: temporary file in the same directory, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(directory: str) -> None:
    """Delete the temporary files that writes killed before their rename (SIGKILL, power loss) left."""
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            os.unlink(os.path.join(directory, name))


def corrupt_checkpoint(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path} is truncated or corrupt ({why}); use another checkpoint "
        "(e.g. 'best' or an 'epoch_N' file) or re-create it."
    )


def checkpoint_path(path: str) -> str:
    """`path`, or, when only the file without its ``.pth`` ending exists, that file: runs keep
    MDistiller's names (``student_best``), which documents copied from other code bases write with
    ``.pth`` (the SFAKD README's ``output/sfakd_res32x4_res8x4/student_best.pth``). The name is
    accepted rather than a second copy written: a full ImageNet checkpoint holds the teacher too."""
    stem, ending = os.path.splitext(path)
    if not os.path.isfile(path) and ending == ".pth" and os.path.isfile(stem):
        return stem
    return path


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint on the CPU with weights-only unpickling; CheckpointError on any problem.
    `path` may end in ``.pth`` where the file does not (:func:`checkpoint_path`)."""
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}. Check the path (runs keep theirs in output/<project>/<name>/).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = UNSAFE_GLOBAL.search(str(err))
        if found is None:
            raise corrupt_checkpoint(path, "not a torch.save file") from None
        raise CheckpointError(
            f"Refused to load {path}: it holds {found.group(1)}, not only tensors and plain data. "
            "Only load checkpoints you trust; re-save its state_dict with torch.save."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise corrupt_checkpoint(path, type(err).__name__) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, expected a dict with a 'model' entry.")
    return state


def strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Keys starting with `prefix`, with it removed (e.g. 'module.' from DataParallel checkpoints)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def unwrapped(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`weights` without the key prefix a wrapper adds to every key: ``module.`` (DataParallel /
    DistributedDataParallel, as MDistiller saves) and ``_orig_mod.`` (torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = strip_prefix(weights, prefix)
    return weights


def student_state_dict(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The student's weights from a student file (`{"model": student}`) or a full distiller checkpoint."""
    if "model" not in state:
        raise CheckpointError("Checkpoint has no 'model' entry; expected an mdistiller / MDistiller checkpoint.")
    weights = unwrapped(state["model"])
    if any(k.startswith("student.") for k in weights):
        weights = strip_prefix(weights, "student.")
    return weights


def load_weights(model: torch.nn.Module, weights: Dict[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(weights, strict=True)`, with a one-line CheckpointError naming mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong_shape = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} keys)"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        ]
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}. "
            "Is it a checkpoint of another architecture?"
        )
    model.load_state_dict(weights, strict=True)
