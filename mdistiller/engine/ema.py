"""An exponential moving average of the student's weights (EMA.*), through timm's ``ModelEmaV3``.

After every optimizer step each parameter and buffer of the average moves towards the student's:
``ema = decay * ema + (1 - decay) * student`` (Polyak averaging, as DeiT trains its students with
``decay`` 0.99996). With EMA.WARMUP the decay of update ``n`` is
``min(decay, 1 - n ** (-2/3))``, counted from 1 (timm's warm-up), so the first updates follow the student
closely. The average starts as a copy of the student and is never trained itself: the trainer
validates it beside the raw student each epoch and checkpoints it (``latest`` holds it for an
exact resume; ``student_ema_latest`` / ``student_ema_best`` are its student files).
"""

from typing import Optional

from torch import nn
from yacs.config import CfgNode as CN

__all__ = ["build_ema"]


def build_ema(model: nn.Module, cfg: CN) -> Optional[nn.Module]:
    """timm's ``ModelEmaV3`` of `model`'s student (on its device and dtype) when EMA.ENABLE, else
    None (also for a model without a student: a stage's, such as the prompt stage's teacher)."""
    section = cfg.get("EMA")
    if section is None or not section.ENABLE:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model.student, decay=float(section.DECAY), use_warmup=bool(section.WARMUP))
