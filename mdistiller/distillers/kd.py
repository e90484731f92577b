"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.config_checks import positive
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.losses.kd import kd_loss
from mdistiller.losses.logit_standardization import standardize_logits

KD_DEFAULTS = CN()
KD_DEFAULTS.TEMPERATURE = 4.0
KD_DEFAULTS.LOGIT_STAND = False
KD_DEFAULTS.LOSS = CN()
KD_DEFAULTS.LOSS.CE_WEIGHT = 0.1
KD_DEFAULTS.LOSS.KD_WEIGHT = 0.9


@register_distiller("KD", KD_DEFAULTS, {"TEMPERATURE": positive})
class KD(Distiller):
    """`loss = CE_WEIGHT * CE(s, y) + KD_WEIGHT * T^2 * KL(softmax(t/T) || softmax(s/T))`.

    `LOGIT_STAND True` z-scores both models' logits before the temperature (Sun et al., "Logit
    Standardization in Knowledge Distillation", CVPR 2024).
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        self.temperature = cfg.KD.TEMPERATURE
        self.ce_loss_weight = cfg.KD.LOSS.CE_WEIGHT
        self.kd_loss_weight = cfg.KD.LOSS.KD_WEIGHT
        self.logit_stand = cfg.KD.LOGIT_STAND

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        logits_student, _ = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        s, t = logits_student, logits_teacher
        if self.logit_stand:
            s, t = standardize_logits(s), standardize_logits(t)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.kd_loss_weight * kd_loss(s, t, self.temperature),
        }
        return logits_student, losses
