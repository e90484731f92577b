"""Optimizers named by SOLVER.TYPE."""

from typing import Iterable

import torch
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

OPTIMIZERS = ("SGD", "AdamW")


def build_optimizer(params: Iterable[torch.nn.Parameter], solver: CN) -> torch.optim.Optimizer:
    """SGD with momentum (MDistiller) or AdamW, with SOLVER.LR and SOLVER.WEIGHT_DECAY."""
    if solver.TYPE == "SGD":
        return torch.optim.SGD(params, lr=solver.LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY)
    if solver.TYPE == "AdamW":
        return torch.optim.AdamW(params, lr=solver.LR, weight_decay=solver.WEIGHT_DECAY)
    raise ConfigError(f"SOLVER.TYPE must be one of {', '.join(OPTIMIZERS)}, got '{solver.TYPE}'.")
