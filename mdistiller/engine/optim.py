"""Optimizers named by SOLVER.TYPE, with timm's weight-decay exclusions when the recipe asks for them."""

from typing import Any, Dict, Iterable, List, Optional, Set

import torch
from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

OPTIMIZERS = ("SGD", "AdamW")


def no_weight_decay_names(model: nn.Module) -> Set[str]:
    """The full names of the parameters that any submodule of `model` lists in its ``no_weight_decay()``
    (timm's convention: ViT / DeiT ``pos_embed``, ``cls_token``, ``dist_token``; Swin ``absolute_pos_embed``)."""
    names: Set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


def weight_decay_groups(params: Iterable[nn.Parameter], solver: CN, model: Optional[nn.Module]) -> List[Dict[str, Any]]:
    """`params` split as timm's ``param_groups_weight_decay`` splits `model`'s (what timm's
    ``create_optimizer`` does given the model, as DeiT's and OFA-KD's ``main.py`` / ``train.py`` call
    it): no decay on 1-D parameters and biases with SOLVER.NO_WD_1D, nor on the ``no_weight_decay()``
    names with SOLVER.NO_WD_TOKENS; one group with SOLVER.WEIGHT_DECAY when both are off."""
    params = list(params)
    if model is None or not (solver.NO_WD_1D or solver.NO_WD_TOKENS):
        return [{"params": params}]
    from timm.optim import param_groups_weight_decay

    wanted = {id(p) for p in params}
    groups = param_groups_weight_decay(model, solver.WEIGHT_DECAY, weight_decay_exclude_1d=solver.NO_WD_1D,
                                       no_weight_decay_list=no_weight_decay_names(model) if solver.NO_WD_TOKENS else ())
    groups = [dict(group, params=[p for p in group["params"] if id(p) in wanted]) for group in groups]
    return [group for group in groups if group["params"]]


def build_optimizer(params: Iterable[nn.Parameter], solver: CN, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
    """SGD with momentum (MDistiller) or AdamW, with SOLVER.LR and SOLVER.WEIGHT_DECAY; `model` (the
    module holding `params`) names them for the weight-decay exclusions (:func:`weight_decay_groups`)."""
    groups = weight_decay_groups(params, solver, model)
    if solver.TYPE == "SGD":
        return torch.optim.SGD(groups, lr=solver.LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY)
    if solver.TYPE == "AdamW":
        return torch.optim.AdamW(groups, lr=solver.LR, weight_decay=solver.WEIGHT_DECAY)
    raise ConfigError(f"SOLVER.TYPE must be one of {', '.join(OPTIMIZERS)}, got '{solver.TYPE}'.")
