"""Weights for ``timm:`` / ``torchvision:`` models: files in the usual forms and the libraries' own.

A weights spec is one of

- a file: a plain state dict, a timm checkpoint (``state_dict_ema`` / ``model_ema`` preferred, then
  ``state_dict``, then ``model``), an mdistiller checkpoint or student file, or a ``.safetensors``
  file (what timm's hub holds);
- ``timm:pretrained``: timm's own download of the model's default pretrained tag;
- ``torchvision:<Enum>.<NAME>`` (``torchvision:ResNet18_Weights.IMAGENET1K_V1``): torchvision's
  weights API.

A download that cannot be had (no network) is refused in one line naming the file to fetch and where
to put it. :func:`load_into` loads a state dict into an adapted model: with ``new_head`` a classifier
of another size is left freshly initialised (fine-tuning a pretrained model on the dataset), without
it such a classifier is refused with the fix (a teacher must already predict the dataset's classes).
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from mdistiller.errors import CheckpointError
from mdistiller.models.adapter import last_linear

__all__ = ["TIMM_PRETRAINED", "torchvision_state_dict", "timm_state_dict", "unwrap_state_dict", "load_into"]

TIMM_PRETRAINED = "timm:pretrained"
TORCHVISION_WEIGHTS = "torchvision:"

# timm's checkpoints keep the model under one of these keys; the EMA weights are the ones it evaluates.
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Wrappers' prefixes: DDP / DataParallel, torch.compile, and the adapter's own ``model.``.
PREFIXES = ("module.", "_orig_mod.", "model.")


def torchvision_state_dict(spec: str) -> Dict[str, torch.Tensor]:
    """The state dict of ``torchvision:<Enum>.<NAME>``; a one-line CheckpointError when it cannot be had."""
    import torchvision

    enum_name = spec[len(TORCHVISION_WEIGHTS):]
    try:
        weights = torchvision.models.get_weight(enum_name)
    except (ValueError, KeyError, AttributeError):
        raise CheckpointError(f"Unknown torchvision weights '{enum_name}': write e.g. "
                              "torchvision:ResNet18_Weights.IMAGENET1K_V1.") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # urllib / http / hash errors: all mean "no usable download"
        raise CheckpointError(
            f"Cannot download torchvision weights {enum_name} ({type(err).__name__}; offline?): download "
            f"{weights.url} on a machine with network and set the weights to that file's path instead.") from None


def timm_state_dict(model_name: str) -> Dict[str, torch.Tensor]:
    """The pretrained weights of timm model ``model_name`` (its default tag, or the tag the name
    carries: ``convnext_tiny.fb_in1k``), through timm's own download."""
    import timm
    from timm.models import load_state_dict_from_hf

    config = timm.models.get_pretrained_cfg(model_name)  # a tagged name (resnet50.a1_in1k) gives that tag
    hub_id = getattr(config, "hf_hub_id", None)
    if not hub_id:
        raise CheckpointError(f"timm has no pretrained weights for {model_name}: give a weights file instead.")
    try:
        return load_state_dict_from_hf(hub_id)
    except Exception as err:  # huggingface_hub's offline / http errors: all mean "no usable download"
        import huggingface_hub

        raise CheckpointError(
            f"Cannot download timm weights for {model_name} ({type(err).__name__}; offline?): fetch "
            f"https://huggingface.co/{hub_id} (model.safetensors) on a machine with network and give that "
            f"file's path as the weights, or place the repository in {huggingface_hub.constants.HF_HUB_CACHE}."
        ) from None


def unwrap_state_dict(state: Dict[str, object], source: str) -> Dict[str, torch.Tensor]:
    """The model's tensors from any of the usual checkpoint forms, wrapper prefixes removed."""
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    weights = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not weights:
        raise CheckpointError(f"{source} holds no tensors: expected a state dict or a checkpoint with one of "
                              f"{', '.join(WRAPPER_KEYS)}.")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
        if prefix == "_orig_mod." and any(k.startswith("student.") for k in weights):
            # a whole distiller's checkpoint: the student's part
            weights = {k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")}
    return weights


def _classifier_names(model: nn.Module) -> List[str]:
    """Module names of the classifier(s): timm's declared ones, else the last linear layer."""
    declared = getattr(model, "pretrained_cfg", {}).get("classifier")
    if declared:
        return list(declared) if isinstance(declared, (list, tuple)) else [declared]
    found = last_linear(model)
    return [found[0]] if found else []


def load_into(model: nn.Module, weights: Dict[str, torch.Tensor], source: str, new_head: bool,
              num_classes: Optional[int] = None) -> None:
    """Load ``weights`` into the bare model (an adapter's ``.model``), strictly but for the classifier.

    A classifier whose size differs from the model's is kept freshly initialised with ``new_head``
    and refused without it; any other mismatch is refused naming the keys.
    """
    own = model.state_dict()
    heads = tuple(f"{name}." for name in _classifier_names(model))
    head_mismatch = [k for k, v in weights.items()  # the class count differs, the rest fits
                     if k.startswith(heads) and k in own and own[k].shape != v.shape and own[k].shape[1:] == v.shape[1:]]
    if head_mismatch and not new_head:
        found = weights[head_mismatch[0]].shape[0]
        raise CheckpointError(
            f"{source}: its classifier has {found} outputs, the dataset {num_classes or own[head_mismatch[0]].shape[0]} "
            "classes. Fine-tune it on the dataset first (DISTILLER.TYPE NONE with these weights as "
            "DISTILLER.STUDENT_WEIGHTS, as configs/cifar100/teachers/ do) and give that checkpoint."
        )
    weights = {k: v for k, v in weights.items() if k not in head_mismatch}
    missing = [k for k in own if k not in weights and not (new_head and k.startswith(heads))]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} keys)"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}. "
                              "Is it a checkpoint of another architecture?")
    model.load_state_dict(weights, strict=False)
