"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022)."""

from typing import Dict, Tuple

import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from mdistiller.config_checks import positive
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.losses.dist import dist_loss

DIST_DEFAULTS = CN()
DIST_DEFAULTS.BETA = 1.0
DIST_DEFAULTS.GAMMA = 1.0
DIST_DEFAULTS.TEMPERATURE = 1.0
DIST_DEFAULTS.LOSS = CN()
DIST_DEFAULTS.LOSS.CE_WEIGHT = 1.0
DIST_DEFAULTS.LOSS.KD_WEIGHT = 2.0  # kd_loss_weight of every config of the authors (hunto/image_classification_sota)


@register_distiller("DIST", DIST_DEFAULTS, {"TEMPERATURE": positive})
class DIST(Distiller):
    """``loss_ce = CE_WEIGHT * CE(z_s, y)``; ``loss_kd = KD_WEIGHT * (BETA * L_inter + GAMMA * L_intra)``,
    the inter- and intra-class Pearson relations of :mod:`mdistiller.losses.dist` (paper Eq. 6) at
    ``TEMPERATURE``. Defaults: the authors' ImageNet setting, beta = gamma = tau = 1 and KD_WEIGHT 2
    (their CIFAR-100 config: tau 4; OFA-KD's baselines: KD_WEIGHT 1). The loss needs no label, so a
    (N, K) soft target (mixup) only changes the CE term.
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.DIST
        self.beta, self.gamma, self.temperature = section.BETA, section.GAMMA, section.TEMPERATURE
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.kd_loss_weight = section.LOSS.KD_WEIGHT

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, _ = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.kd_loss_weight * dist_loss(logits_student, logits_teacher, self.beta, self.gamma,
                                                       self.temperature),
        }
        return logits_student, losses
