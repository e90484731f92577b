"""DeiT's distillation token: Touvron et al., "Training data-efficient image transformers &
distillation through attention" (ICML 2021)."""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, check_rules, positive, probability
from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.errors import IncompatibleModelError
from mdistiller.losses.deit import hard_distillation_loss, late_fusion, soft_distillation_loss

DEIT_DEFAULTS = CN()
DEIT_DEFAULTS.TYPE = "hard"  # hard | soft
DEIT_DEFAULTS.ALPHA = 0.5
DEIT_DEFAULTS.TAU = 1.0
DEIT_DEFAULTS.SOFT_SCALE = "code"  # code: KL / (batch * classes) | paper: KL / batch
DEIT_DEFAULTS.FUSION = "logits"  # logits: mean of the heads' logits (code) | softmax: paper's late fusion

TYPES = ("hard", "soft")
SOFT_SCALES = ("code", "paper")
FUSIONS = ("logits", "softmax")


DEIT_RULES = {"TYPE": OneOf(TYPES), "SOFT_SCALE": OneOf(SOFT_SCALES), "FUSION": OneOf(FUSIONS),
              "ALPHA": probability, "TAU": positive}


@register_distiller("DEIT", DEIT_DEFAULTS, DEIT_RULES)
class DEIT(Distiller):
    """``loss_ce = (1 - ALPHA) * CE(z_cls, y)``; ``loss_kd = ALPHA * L_dist(z_dist, z_t)`` with
    L_dist the hard (CE to the teacher's arg-max) or soft (``TAU^2`` KL) distillation of
    :mod:`mdistiller.losses.deit`, on the student's class-token and distillation-token heads.

    The student must carry a distillation token and its head (``feats["head_logits"]`` from the
    adapter): timm's ``deit_*_distilled_*`` models. The teacher sees the very images the student
    sees, mixed ones included, so a hard teacher label follows the augmentation. ``SOFT_SCALE``:
    ``code`` divides the summed KL by batch x classes as the released code, ``paper`` by the batch.
    ``FUSION`` sets what evaluation scores: the mean of the two heads' logits (the released code) or
    the log of the mean of their softmax outputs (the paper's late fusion). ``TAU``: 1 in the
    released code's defaults, 3 in the paper's soft-distillation runs.
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.DEIT
        check_rules(section, DEIT_RULES, "DEIT.")
        self.hard = section.TYPE == "hard"
        self.alpha, self.tau = section.ALPHA, section.TAU
        self.per_class_mean = section.SOFT_SCALE == "code"
        self.softmax_fusion = section.FUSION == "softmax"
        was_training = student.training
        student.eval()
        with torch.no_grad():
            size = image_size(cfg)
            _, feats = student(torch.zeros(1, 3, size, size, device=next(student.parameters()).device))
        student.train(was_training)
        if "head_logits" not in feats:
            raise IncompatibleModelError(
                "DEIT needs a student with a distillation token and a second head: use a timm distilled DeiT "
                "such as timm:deit_tiny_distilled_patch16_224"
            )

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        _, feats = self.student(image)
        logits_cls, logits_dist = feats["head_logits"]
        logits_teacher, _ = self.teacher_forward(image)
        if self.hard:
            distill = hard_distillation_loss(logits_dist, logits_teacher)
        else:
            distill = soft_distillation_loss(logits_dist, logits_teacher, self.tau, self.per_class_mean)
        losses = {
            "loss_ce": (1.0 - self.alpha) * F.cross_entropy(logits_cls, target),
            "loss_kd": self.alpha * distill,
        }
        return late_fusion(logits_cls, logits_dist, self.softmax_fusion), losses

    def forward_test(self, image: Tensor) -> Tensor:
        logits_cls, logits_dist = self.student(image)[1]["head_logits"]
        return late_fusion(logits_cls, logits_dist, self.softmax_fusion)
