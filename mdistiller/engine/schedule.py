"""Learning-rate schedules, evaluated per epoch (epochs count from 1, as in MDistiller)."""

import math

from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

SCHEDULERS = ("step", "cosine")


def learning_rate(epoch: int, solver: CN) -> float:
    """LR for `epoch`: MDistiller's step decay or cosine, after an optional linear warm-up.

    Step: `LR * LR_DECAY_RATE ** (number of LR_DECAY_STAGES below epoch)`. Cosine: from LR at the
    end of warm-up down to MIN_LR at EPOCHS, `MIN_LR + (LR - MIN_LR) * (1 + cos(pi * progress)) / 2`.
    Warm-up: `LR * epoch / WARMUP_EPOCHS` for the first epochs.
    """
    if solver.WARMUP_EPOCHS > 0 and epoch <= solver.WARMUP_EPOCHS:
        return solver.LR * epoch / solver.WARMUP_EPOCHS
    if solver.LR_SCHEDULER == "step":
        steps = sum(epoch > stage for stage in solver.LR_DECAY_STAGES)
        return solver.LR * solver.LR_DECAY_RATE**steps
    if solver.LR_SCHEDULER == "cosine":
        span = max(solver.EPOCHS - solver.WARMUP_EPOCHS, 1)
        progress = (epoch - 1 - solver.WARMUP_EPOCHS) / span
        min_lr = solver.get("MIN_LR", 0.0)
        return min_lr + 0.5 * (solver.LR - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"SOLVER.LR_SCHEDULER must be one of {', '.join(SCHEDULERS)}, got '{solver.LR_SCHEDULER}'.")


def linear_warmup_factor(iteration: int, warmup_iters: int, start_factor: float) -> float:
    """mmdetection's linear warm-up counted in iterations: the LR multiplier at `iteration` (from 0),
    ``start_factor + (1 - start_factor) * iteration / warmup_iters``, and 1 from `warmup_iters` on."""
    if iteration >= warmup_iters:
        return 1.0
    return start_factor + (1.0 - start_factor) * iteration / warmup_iters
