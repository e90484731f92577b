"""Loading ImageNet teacher weights: torchvision's hub cache for ResNets, local files otherwise.

Every failure a user can fix (no network, missing / corrupt file, wrong architecture) raises
:class:`~mdistiller.errors.CheckpointError` with a one-line message saying what to do.
"""

import os
from pathlib import Path
from typing import Dict, Union
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from mdistiller.errors import CheckpointError


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_state_dict_file(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Read a state dict saved as a plain dict of tensors or as ``{"model": state_dict}``.

    Uses ``torch.load(path, map_location="cpu", weights_only=True)``: no pickled code runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for truncated / unsafe files
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({_one_line(error)}); replace it with a complete copy."
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(value, Tensor) for value in checkpoint.values()
    ):
        raise CheckpointError(
            f"Checkpoint {path} holds no state dict "
            "(expected a dict of tensors or {'model': dict of tensors})."
        )
    return checkpoint


def torchvision_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches ``weights``: ``torch.hub.get_dir()/checkpoints/<url file name>``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_torchvision_state_dict(weights: WeightsEnum, progress: bool = True) -> Dict[str, Tensor]:
    """The state dict of torchvision ``weights``, downloaded into the hub cache if not there yet.

    A file already in the cache is loaded without touching the network. When the download fails
    the error names the file to place by hand and the directory to place it in.
    """
    path = torchvision_weights_path(weights)
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        hash_prefix = match.group(1) if match else None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix, progress=progress)
        except Exception as error:  # URLError, HTTPException, hash mismatch, read-only cache, ...
            raise CheckpointError(
                f"Cannot download {weights.url} ({_one_line(error)}). "
                f"Place the file {path.name} in {path.parent} and run again."
            ) from error
    return load_state_dict_file(path)


def load_weights(model: nn.Module, state_dict: Dict[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``; a mismatch becomes a CheckpointError."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"Weights from {source} do not fit {type(model).__name__} ({_one_line(error)})."
        ) from error
