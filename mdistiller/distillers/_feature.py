"""The shape MDistiller's feature and relation distillers share: CE + FEAT_WEIGHT * a feature loss."""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import Distiller

Features = Dict[str, object]


def loss_weights(feat_weight: float, ce_weight: float = 1.0) -> CN:
    """A `LOSS` config section: `CE_WEIGHT`, `FEAT_WEIGHT`."""
    section = CN()
    section.CE_WEIGHT = ce_weight
    section.FEAT_WEIGHT = feat_weight
    return section


class FeatureDistiller(Distiller):
    """`loss_ce = CE_WEIGHT * CE(student, y)`, `loss_kd = FEAT_WEIGHT * feature_loss(student, teacher)`.

    Subclasses name their config section in `cfg_section` and implement `feature_loss` over the
    two models' feature dicts (`feats`, `preact_feats`, `pooled_feat`).
    """

    cfg_section = ""

    def __init__(self, student, teacher, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg[self.cfg_section]
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT

    def feature_loss(self, feature_student: Features, feature_teacher: Features) -> torch.Tensor:
        raise NotImplementedError

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch) -> Tuple[torch.Tensor, Dict]:
        logits_student, feature_student = self.student(image)
        _, feature_teacher = self.teacher_forward(image)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * self.feature_loss(feature_student, feature_teacher),
        }
        return logits_student, losses
