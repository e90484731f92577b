"""DKD: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022)."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.config_checks import positive
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.losses.dkd import dkd_loss
from mdistiller.losses.logit_standardization import standardize_logits

DKD_DEFAULTS = CN()
DKD_DEFAULTS.CE_WEIGHT = 1.0
DKD_DEFAULTS.ALPHA = 1.0
DKD_DEFAULTS.BETA = 8.0
DKD_DEFAULTS.T = 4.0
DKD_DEFAULTS.WARMUP = 20
DKD_DEFAULTS.LOGIT_STAND = False


@register_distiller("DKD", DKD_DEFAULTS, {"T": positive})
class DKD(Distiller):
    """`loss = CE_WEIGHT * CE + min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD)` at temperature T.

    `LOGIT_STAND True` z-scores both models' logits first (Sun et al., CVPR 2024).
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        self.ce_loss_weight = cfg.DKD.CE_WEIGHT
        self.alpha = cfg.DKD.ALPHA
        self.beta = cfg.DKD.BETA
        self.temperature = cfg.DKD.T
        self.warmup = cfg.DKD.WARMUP
        self.logit_stand = cfg.DKD.LOGIT_STAND

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, epoch: int, **batch):
        logits_student, _ = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        s, t = logits_student, logits_teacher
        if self.logit_stand:
            s, t = standardize_logits(s), standardize_logits(t)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": min(epoch / self.warmup, 1.0)
            * dkd_loss(s, t, target, self.alpha, self.beta, self.temperature),
        }
        return logits_student, losses
