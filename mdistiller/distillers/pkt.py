"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.pkt import pkt_loss

PKT_DEFAULTS = CN()
PKT_DEFAULTS.LOSS = loss_weights(feat_weight=30000.0)


@register_distiller("PKT", PKT_DEFAULTS)
class PKT(FeatureDistiller):
    """KL between the cosine-kernel conditional probabilities of the pooled features (eq. 9)."""

    cfg_section = "PKT"

    def feature_loss(self, feature_student, feature_teacher):
        return pkt_loss(feature_student["pooled_feat"], feature_teacher["pooled_feat"])
