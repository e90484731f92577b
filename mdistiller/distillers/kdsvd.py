"""KDSVD: Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.kdsvd import kdsvd_loss

KDSVD_DEFAULTS = CN()
KDSVD_DEFAULTS.K = 1
KDSVD_DEFAULTS.LOSS = loss_weights(feat_weight=1.0)


@register_distiller("KDSVD", KDSVD_DEFAULTS)
class KDSVD(FeatureDistiller):
    """Truncated SVD of `feats[1:]` (teacher K vectors, student K + 3, sign-aligned), RBF relations
    between consecutive stages, squared difference (see `mdistiller.losses.kdsvd`)."""

    cfg_section = "KDSVD"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.k = cfg.KDSVD.K

    def feature_loss(self, feature_student, feature_teacher):
        return kdsvd_loss(feature_student["feats"][1:], feature_teacher["feats"][1:], self.k)
