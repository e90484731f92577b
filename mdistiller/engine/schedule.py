"""Learning-rate schedules, evaluated per epoch (epochs count from 1, as in MDistiller) or, for a run
of SOLVER.ITERS iterations (the dense trainer), per iteration (from 0, as mmcv's ``runner.iter``)."""

import math

from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

SCHEDULERS = ("step", "cosine", "poly")


def _scheduled(done: int, total: int, warmup: int, solver: CN) -> float:
    """The LR after `done` of `total` units (epochs or iterations), `warmup` of them warm-up.

    Step: ``LR * LR_DECAY_RATE ** (number of LR_DECAY_STAGES <= done)``. Cosine: from LR at the end
    of warm-up down to MIN_LR at `total`, ``MIN_LR + (LR - MIN_LR) * (1 + cos(pi * p)) / 2`` with
    ``p = (done - warmup) / (total - warmup)``. Poly (mmcv's PolyLrUpdaterHook):
    ``(LR - POLY_MIN_LR) * (1 - done / total) ** POLY_POWER + POLY_MIN_LR``.
    """
    if solver.LR_SCHEDULER == "step":
        steps = sum(done >= stage for stage in solver.LR_DECAY_STAGES)
        return solver.LR * solver.LR_DECAY_RATE**steps
    if solver.LR_SCHEDULER == "cosine":
        progress = (done - warmup) / max(total - warmup, 1)
        min_lr = solver.get("MIN_LR", 0.0)
        return min_lr + 0.5 * (solver.LR - min_lr) * (1.0 + math.cos(math.pi * progress))
    if solver.LR_SCHEDULER == "poly":
        min_lr = solver.get("POLY_MIN_LR", 1e-4)
        return (solver.LR - min_lr) * (1.0 - done / max(total, 1)) ** solver.get("POLY_POWER", 0.9) + min_lr
    raise ConfigError(f"SOLVER.LR_SCHEDULER must be one of {', '.join(SCHEDULERS)}, got '{solver.LR_SCHEDULER}'.")


def learning_rate(epoch: int, solver: CN) -> float:
    """LR for `epoch`: MDistiller's step decay, cosine or poly (see :func:`_scheduled`, with the
    epochs before this one done), after an optional linear warm-up ``LR * epoch / WARMUP_EPOCHS``
    for the first epochs. Step decays after each epoch of LR_DECAY_STAGES."""
    if solver.WARMUP_EPOCHS > 0 and epoch <= solver.WARMUP_EPOCHS:
        return solver.LR * epoch / solver.WARMUP_EPOCHS
    return _scheduled(epoch - 1, solver.EPOCHS, solver.WARMUP_EPOCHS, solver)


def iteration_learning_rate(iteration: int, solver: CN) -> float:
    """LR for `iteration` (from 0) of a run of SOLVER.ITERS iterations: step (LR_DECAY_STAGES counted
    in iterations), cosine or poly over ITERS (mmsegmentation's ``poly``, ``by_epoch=False``)."""
    return _scheduled(iteration, solver.ITERS, 0, solver)


def linear_warmup_factor(iteration: int, warmup_iters: int, start_factor: float) -> float:
    """mmdetection's linear warm-up counted in iterations: the LR multiplier at `iteration` (from 0),
    ``start_factor + (1 - start_factor) * iteration / warmup_iters``, and 1 from `warmup_iters` on."""
    if iteration >= warmup_iters:
        return 1.0
    return start_factor + (1.0 - start_factor) * iteration / warmup_iters
