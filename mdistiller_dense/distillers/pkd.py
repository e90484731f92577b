"""PKD on dense features: Cao et al., NeurIPS 2022 (math: mdistiller/losses/pkd.py); in the frequency
domain as FreeKD's supplement B (Table 10) runs it."""

from yacs.config import CfgNode as CN

from mdistiller.losses.pkd import frequency_pkd_loss, pkd_loss
from mdistiller_dense.distillers._base import (DOMAIN_RULES, DenseDistiller, align_convs, check_domain,
                                               register_dense_distiller, select_levels)

PKD_DEFAULTS = CN()
PKD_DEFAULTS.WEIGHT = 6.0        # Faster R-CNN; 10 RetinaNet / FCOS (the authors' configs)
PKD_DEFAULTS.LEVELS = 4
PKD_DEFAULTS.DOMAIN = "spatial"  # spatial | frequency (the Haar DWT's high bands, FreeKD supplement B)
PKD_DEFAULTS.DWT_LEVELS = 1      # DOMAIN frequency: DWT levels whose high bands are distilled


@register_dense_distiller("PKD", PKD_DEFAULTS, DOMAIN_RULES)
class DensePKD(DenseDistiller):
    """``loss_kd = WEIGHT * sum_levels MSE(std(s), std(t)) / 2``, per-channel standardisation over
    (N, H, W); a 1x1 align conv only where channels differ (PKD itself needs none).

    DOMAIN frequency: the same loss on the high bands (LH, HL, HH) of a DWT_LEVELS-level Haar DWT of
    the aligned student map (resized to the teacher's) and of the teacher's, each (channel,
    orientation) one channel, summed over the DWT levels.
    """

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        self.section = cfg.PKD
        self.frequency = check_domain(self.section, "PKD")
        n = len(select_levels(self.t_channels, self.section.LEVELS))
        self.align = align_convs(self.s_channels[:n], self.t_channels[:n])

    def level_loss(self, s, t):
        if self.frequency:
            return frequency_pkd_loss(s, t, self.section.DWT_LEVELS)
        return pkd_loss(s, t)

    def distill(self, s_levels, t_levels, batch, **extra):
        n = len(self.align)
        loss = sum(self.level_loss(align(s), t) for align, s, t in zip(self.align, s_levels[:n], t_levels[:n]))
        return {"loss_kd": self.section.WEIGHT * loss}
