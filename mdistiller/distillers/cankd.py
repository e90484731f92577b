"""CanKD: Sun & Ohyama, "CanKD: Cross-Attention-based Non-local operation for Feature-based
Knowledge Distillation" (2025), on the last backbone stage (its classification setting)."""

from typing import Dict, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, check_rules
from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.errors import ConfigError
from mdistiller.losses.cankd import AFFINITIES, CrossAttentionNonLocal, cankd_loss
from mdistiller.losses.spatial import common_size, pool_to_size

CANKD_DEFAULTS = CN()
CANKD_DEFAULTS.AFFINITY = "dot_product"
CANKD_DEFAULTS.RESIDUAL = True
CANKD_DEFAULTS.POOL_SIZE = 2
CANKD_DEFAULTS.LOSS = CN()
CANKD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
CANKD_DEFAULTS.LOSS.FEAT_WEIGHT = 5.0


CANKD_RULES = {"AFFINITY": OneOf(AFFINITIES)}


@register_distiller("CANKD", CANKD_DEFAULTS, CANKD_RULES)
class CANKD(Distiller):
    """``loss_ce = CE_WEIGHT * CE(s, y)``; ``loss_kd = FEAT_WEIGHT * MSE(IN(z_s), IN(t)) / 2`` with
    ``z_s`` the cross-attention non-local block (:mod:`mdistiller.losses.cankd`) on the last-stage
    maps ``feats[-1]``.

    The larger map is average-pooled to the smaller size; a 1x1 conv ``connector`` (with bias, as
    the authors' segmentation connector) takes the student to the teacher's channels when they
    differ. FEAT_WEIGHT is the paper's mu (5; the authors' configs write loss_weight 10 and halve).
    AFFINITY: dot_product | gaussian | embedded_gaussian; RESIDUAL: z_s = W(y) + s or W(y);
    POOL_SIZE: the teacher-side max-pool (2; the paper's ablation tries 4 and 8).
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.CANKD
        check_rules(section, CANKD_RULES, "CANKD.")
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT
        s_shape = feature_shapes(student, image_size(cfg))["feats"][-1]
        t_shape = feature_shapes(teacher, image_size(cfg))["feats"][-1]
        self.feature_size = common_size(s_shape, t_shape)
        if self.feature_size[0] * self.feature_size[1] == 1:
            raise ConfigError(
                f"CANKD instance-normalises the last-stage maps, which are 1x1 here at DATASET.IMAGE_SIZE "
                f"{image_size(cfg)}: raise DATASET.IMAGE_SIZE until both last maps are at least 2x2."
            )
        if section.POOL_SIZE < 1 or min(self.feature_size) < section.POOL_SIZE:
            raise ConfigError(
                f"CANKD.POOL_SIZE {section.POOL_SIZE} does not fit the {self.feature_size[0]}x{self.feature_size[1]} "
                "last-stage maps: use a size from 1 to the map size (2 is the paper's)."
            )
        s_channels, t_channels = s_shape[-3], t_shape[-3]
        self.connector = nn.Conv2d(s_channels, t_channels, kernel_size=1) if s_channels != t_channels else nn.Identity()
        self.can = CrossAttentionNonLocal(t_channels, section.AFFINITY, section.RESIDUAL, section.POOL_SIZE)

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        s = self.connector(pool_to_size(feats_student["feats"][-1], self.feature_size))
        t = pool_to_size(feats_teacher["feats"][-1], self.feature_size)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * cankd_loss(self.can, s, t),
        }
        return logits_student, losses
