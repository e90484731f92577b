"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.sp import sp_loss

SP_DEFAULTS = CN()
SP_DEFAULTS.LOSS = loss_weights(feat_weight=3000.0)


@register_distiller("SP", SP_DEFAULTS)
class SP(FeatureDistiller):
    """Batch similarity (row-normalised Gram) matrices of the last stage `feats[-1]`, squared
    Frobenius distance / batch^2."""

    cfg_section = "SP"

    def feature_loss(self, feature_student, feature_teacher):
        return sp_loss([feature_student["feats"][-1]], [feature_teacher["feats"][-1]])
