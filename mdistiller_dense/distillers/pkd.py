"""PKD on dense features: Cao et al., NeurIPS 2022 (math: mdistiller/losses/pkd.py)."""

from yacs.config import CfgNode as CN

from mdistiller.losses.pkd import pkd_loss
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller, select_levels

PKD_DEFAULTS = CN()
PKD_DEFAULTS.WEIGHT = 6.0        # Faster R-CNN; 10 RetinaNet / FCOS (the authors' configs)
PKD_DEFAULTS.LEVELS = 4


@register_dense_distiller("PKD", PKD_DEFAULTS)
class DensePKD(DenseDistiller):
    """``loss_kd = WEIGHT * sum_levels MSE(std(s), std(t)) / 2``, per-channel standardisation over
    (N, H, W); a 1x1 align conv only where channels differ (PKD itself needs none)."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        self.section = cfg.PKD
        n = len(select_levels(self.t_channels, self.section.LEVELS))
        self.align = align_convs(self.s_channels[:n], self.t_channels[:n])

    def distill(self, s_levels, t_levels, batch, **extra):
        n = len(self.align)
        loss = sum(pkd_loss(align(s), t) for align, s, t in zip(self.align, s_levels[:n], t_levels[:n]))
        return {"loss_kd": self.section.WEIGHT * loss}
