"""RKD: Park et al., "Relational Knowledge Distillation", CVPR 2019."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.rkd import rkd_loss

RKD_DEFAULTS = CN()
RKD_DEFAULTS.DISTANCE_WEIGHT = 25
RKD_DEFAULTS.ANGLE_WEIGHT = 50
RKD_DEFAULTS.LOSS = loss_weights(feat_weight=1.0)
RKD_DEFAULTS.PDIST = CN()
RKD_DEFAULTS.PDIST.EPSILON = 1e-12
RKD_DEFAULTS.PDIST.SQUARED = False


@register_distiller("RKD", RKD_DEFAULTS)
class RKD(FeatureDistiller):
    """Distance-wise (eq. 5, 6) and angle-wise (eq. 7, 8) relations of `pooled_feat`, smooth-L1;
    `DISTANCE_WEIGHT * L_D + ANGLE_WEIGHT * L_A`."""

    cfg_section = "RKD"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.distance_weight = cfg.RKD.DISTANCE_WEIGHT
        self.angle_weight = cfg.RKD.ANGLE_WEIGHT
        self.eps = cfg.RKD.PDIST.EPSILON
        self.squared = cfg.RKD.PDIST.SQUARED

    def feature_loss(self, feature_student, feature_teacher):
        return rkd_loss(
            feature_student["pooled_feat"], feature_teacher["pooled_feat"],
            self.squared, self.eps, self.distance_weight, self.angle_weight,
        )
