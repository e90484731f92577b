"""Learning-rate schedules, evaluated per epoch (epochs count from 1, as in MDistiller) or, for a run
of SOLVER.ITERS iterations (the dense trainer), per iteration (from 0, as mmcv's ``runner.iter``).

Two shapes of warm-up and cosine (``SOLVER.SCHEDULE_STYLE``): ``mdistiller`` warms up to LR at the
last warm-up epoch and runs the cosine over the epochs after it; ``timm`` is timm's schedulers
(``CosineLRScheduler`` / ``StepLRScheduler`` as DeiT's and OFA-KD's ``create_scheduler`` build them,
``warmup_prefix`` False, stepped once per epoch): the first epoch at WARMUP_LR, then linearly up,
the cosine over all EPOCHS with the warm-up epochs inside it."""

import math

from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

SCHEDULERS = ("step", "cosine", "poly")
SCHEDULE_STYLES = ("mdistiller", "timm")


def _scheduled(done: int, total: int, warmup: int, solver: CN) -> float:
    """The LR after `done` of `total` units (epochs or iterations), the cosine starting after
    `warmup` of them (0: over all of them, as timm's).

    Step: ``LR * LR_DECAY_RATE ** (number of LR_DECAY_STAGES <= done)``. Cosine: from LR at `warmup`
    down to MIN_LR at `total`, ``MIN_LR + (LR - MIN_LR) * (1 + cos(pi * p)) / 2`` with
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
    epochs before this one done) after an optional linear warm-up over the first WARMUP_EPOCHS.
    Step decays after each epoch of LR_DECAY_STAGES.

    SCHEDULE_STYLE ``mdistiller``: warm-up ``LR * epoch / WARMUP_EPOCHS``, the cosine over the epochs
    after it. ``timm``, with ``t = epoch - 1`` and W = WARMUP_EPOCHS: ``WARMUP_LR + t (LR - WARMUP_LR) / W``
    while t < W, then the schedule at t, the cosine's ``p = t / EPOCHS``."""
    warmup = solver.WARMUP_EPOCHS
    if solver.get("SCHEDULE_STYLE", "mdistiller") == "timm":
        done = epoch - 1
        if done < warmup:
            return solver.WARMUP_LR + done * (solver.LR - solver.WARMUP_LR) / warmup
        return _scheduled(done, solver.EPOCHS, 0, solver)
    if warmup > 0 and epoch <= warmup:
        return solver.LR * epoch / warmup
    return _scheduled(epoch - 1, solver.EPOCHS, warmup, solver)


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
