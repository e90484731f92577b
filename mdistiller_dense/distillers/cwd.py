"""CWD on dense features: Shu et al., ICCV 2021 (math: mdistiller/losses/cwd.py); in the frequency
domain as FreeKD's supplement B (Table 10) runs it."""

from yacs.config import CfgNode as CN

from mdistiller.losses.cwd import cwd_loss, frequency_cwd_loss
from mdistiller.losses.spatial import resize_to
from mdistiller_dense.distillers._base import (DOMAIN_RULES, DenseDistiller, align_convs, check_domain,
                                               register_dense_distiller, select_levels)

CWD_DEFAULTS = CN()
CWD_DEFAULTS.TEMPERATURE = 1.0
CWD_DEFAULTS.WEIGHT = 10.0
CWD_DEFAULTS.LEVELS = 5          # the first LEVELS captured maps (0: all)
CWD_DEFAULTS.DOMAIN = "spatial"  # spatial | frequency (the Haar DWT's high bands, FreeKD supplement B)
CWD_DEFAULTS.DWT_LEVELS = 1      # DOMAIN frequency: DWT levels whose high bands are distilled


@register_dense_distiller("CWD", CWD_DEFAULTS, DOMAIN_RULES)
class DenseCWD(DenseDistiller):
    """``loss_kd = WEIGHT * sum_levels T^2 KL(softmax_hw(t/T) || softmax_hw(align(s)/T)) / (N C)``.

    DOMAIN frequency: the aligned student map is resized to the teacher's, both go through a
    DWT_LEVELS-level Haar DWT and the loss runs on the high bands (LH, HL, HH) of every DWT level, each
    (channel, orientation) one channel, summed over the DWT levels (the approximation is not distilled).
    """

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        self.section = cfg.CWD
        self.frequency = check_domain(self.section, "CWD")
        n = len(select_levels(self.t_channels, self.section.LEVELS))
        self.align = align_convs(self.s_channels[:n], self.t_channels[:n])

    def level_loss(self, s, t):
        if self.frequency:
            return frequency_cwd_loss(resize_to(s, t.shape[-2:]), t, self.section.TEMPERATURE, self.section.DWT_LEVELS)
        return cwd_loss(s, t, self.section.TEMPERATURE)

    def distill(self, s_levels, t_levels, batch, **extra):
        n = len(self.align)
        loss = sum(self.level_loss(align(s), t) for align, s, t in zip(self.align, s_levels[:n], t_levels[:n]))
        return {"loss_kd": self.section.WEIGHT * loss}
