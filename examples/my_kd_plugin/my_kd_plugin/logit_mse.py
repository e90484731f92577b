"""Logit matching: Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.distillers import Distiller, register_distiller

LOGIT_MSE_DEFAULTS = CN()
LOGIT_MSE_DEFAULTS.CE_WEIGHT = 1.0
LOGIT_MSE_DEFAULTS.MSE_WEIGHT = 0.1


def logit_mse_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||z_s - z_t||^2 / num_classes`` (Ba & Caruana's L2 on the logits)."""
    return F.mse_loss(logits_student.float(), logits_teacher.float())


@register_distiller("LOGIT_MSE", LOGIT_MSE_DEFAULTS)
class LogitMSE(Distiller):
    """``loss = CE_WEIGHT * CE(z_s, y) + MSE_WEIGHT * mean (z_s - z_t)^2``: the student regresses the
    teacher's logits (Ba & Caruana, eq. of section 2.2), beside the usual cross-entropy."""

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        self.ce_weight = cfg.LOGIT_MSE.CE_WEIGHT
        self.mse_weight = cfg.LOGIT_MSE.MSE_WEIGHT

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        logits_student, _ = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        losses = {
            "loss_ce": self.ce_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.mse_weight * logit_mse_loss(logits_student, logits_teacher),
        }
        return logits_student, losses
