"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.losses.kd import kd_loss

KD_DEFAULTS = CN()
KD_DEFAULTS.TEMPERATURE = 4.0
KD_DEFAULTS.LOSS = CN()
KD_DEFAULTS.LOSS.CE_WEIGHT = 0.1
KD_DEFAULTS.LOSS.KD_WEIGHT = 0.9


@register_distiller("KD", KD_DEFAULTS)
class KD(Distiller):
    """`loss = CE_WEIGHT * CE(s, y) + KD_WEIGHT * T^2 * KL(softmax(t/T) || softmax(s/T))`."""

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        self.temperature = cfg.KD.TEMPERATURE
        self.ce_loss_weight = cfg.KD.LOSS.CE_WEIGHT
        self.kd_loss_weight = cfg.KD.LOSS.KD_WEIGHT

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        logits_student, _ = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.kd_loss_weight * kd_loss(logits_student, logits_teacher, self.temperature),
        }
        return logits_student, losses
