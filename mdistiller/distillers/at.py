"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017."""

from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.losses.at import at_loss

AT_DEFAULTS = CN()
AT_DEFAULTS.P = 2
AT_DEFAULTS.LOSS = loss_weights(feat_weight=1000.0)


@register_distiller("AT", AT_DEFAULTS)
class AT(FeatureDistiller):
    """Attention maps `normalize(mean_c(f^P))` of `feats[1:]` (eq. 2); loss the squared difference,
    averaged, summed over stages."""

    cfg_section = "AT"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.p = cfg.AT.P

    def feature_loss(self, feature_student, feature_teacher):
        return at_loss(feature_student["feats"][1:], feature_teacher["feats"][1:], self.p)
