"""MGD on dense features: Yang et al., ECCV 2022 (math: mdistiller/losses/mgd.py)."""

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import InRange
from mdistiller.losses.mgd import MaskedGenerator, mgd_loss, random_keep_mask
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller, select_levels

MGD_DEFAULTS = CN()
MGD_DEFAULTS.ALPHA = 2e-5        # RetinaNet / FCOS / Faster R-CNN configs of the authors
MGD_DEFAULTS.MASK_RATIO = 0.65
MGD_DEFAULTS.LEVELS = 0


@register_dense_distiller("MGD", MGD_DEFAULTS, {"MASK_RATIO": InRange(0.0, 1.0, high_open=True)})
class DenseMGD(DenseDistiller):
    """``loss_kd = ALPHA * sum_levels sum (G(M * align(s)) - t)^2 / N``; one generator per level."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        self.section = cfg.MGD
        channels = select_levels(self.t_channels, self.section.LEVELS)
        self.align = align_convs(self.s_channels[:len(channels)], channels)
        self.generators = nn.ModuleList(MaskedGenerator(c) for c in channels)

    def distill(self, s_levels, t_levels, batch, **extra):
        loss = 0.0
        for align, generator, s, t in zip(self.align, self.generators, s_levels, t_levels):
            s = align(s)
            loss = loss + mgd_loss(generator, s, t, random_keep_mask(s, self.section.MASK_RATIO))
        return {"loss_kd": self.section.ALPHA * loss}
