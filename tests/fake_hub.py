"""timm's pretrained weights without the network: a state dict written where timm's download looks
(huggingface_hub's cache, ``models--timm--<name>.<tag>/snapshots/<commit>/model.safetensors`` with
``refs/main`` naming the commit), in the hub's own file format. Use with :func:`offline_hub`."""

from pathlib import Path
from typing import Dict

import torch

FAKE_COMMIT = "0" * 40


def offline_hub(monkeypatch, cache_dir: Path) -> Path:
    """huggingface_hub offline, its cache at `cache_dir` (both read at call time)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache_dir))
    return cache_dir


def place_timm_weights(cache_dir: Path, model_name: str, state_dict: Dict[str, torch.Tensor]) -> Path:
    """Write `state_dict` as the pretrained weights timm downloads for `model_name` (a tag or the
    default one); returns the file."""
    import timm
    from safetensors.torch import save_file

    hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    repo = Path(cache_dir) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path
