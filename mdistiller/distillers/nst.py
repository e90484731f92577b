"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", 2017."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.nst import nst_loss

NST_DEFAULTS = CN()
NST_DEFAULTS.LOSS = loss_weights(feat_weight=50.0)


@register_distiller("NST", NST_DEFAULTS)
class NST(FeatureDistiller):
    """Polynomial-kernel MMD between the channels' normalised spatial maps of `feats[1:]`."""

    cfg_section = "NST"

    def feature_loss(self, feature_student, feature_teacher):
        return nst_loss(feature_student["feats"][1:], feature_teacher["feats"][1:])
