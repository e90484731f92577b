"""CWD on dense features: Shu et al., ICCV 2021 (math: mdistiller/losses/cwd.py)."""

from yacs.config import CfgNode as CN

from mdistiller.losses.cwd import cwd_loss
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller, select_levels

CWD_DEFAULTS = CN()
CWD_DEFAULTS.TEMPERATURE = 1.0
CWD_DEFAULTS.WEIGHT = 10.0
CWD_DEFAULTS.LEVELS = 5          # the first LEVELS captured maps (0: all)


@register_dense_distiller("CWD", CWD_DEFAULTS)
class DenseCWD(DenseDistiller):
    """``loss_kd = WEIGHT * sum_levels T^2 KL(softmax_hw(t/T) || softmax_hw(align(s)/T)) / (N C)``."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        self.section = cfg.CWD
        n = len(select_levels(self.t_channels, self.section.LEVELS))
        self.align = align_convs(self.s_channels[:n], self.t_channels[:n])

    def distill(self, s_levels, t_levels, batch, **extra):
        n = len(self.align)
        loss = sum(cwd_loss(align(s), t, self.section.TEMPERATURE)
                   for align, s, t in zip(self.align, s_levels[:n], t_levels[:n]))
        return {"loss_kd": self.section.WEIGHT * loss}
