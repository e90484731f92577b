"""CanKD on dense features: Sun & Ohyama 2025 (math: mdistiller/losses/cankd.py)."""

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import check_rules
from mdistiller.distillers.cankd import CANKD_RULES
from mdistiller.errors import ConfigError
from mdistiller.losses.cankd import CrossAttentionNonLocal, cankd_loss
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller, select_levels

CANKD_DEFAULTS = CN()
CANKD_DEFAULTS.WEIGHT = 5.0      # mu (the authors write loss_weight 10 and halve it)
CANKD_DEFAULTS.LEVELS = 4        # detection: FPN levels 0..3, one block each
CANKD_DEFAULTS.AFFINITY = "dot_product"
CANKD_DEFAULTS.RESIDUAL = True
CANKD_DEFAULTS.POOL_SIZE = 2


@register_dense_distiller("CANKD", CANKD_DEFAULTS, CANKD_RULES)
class DenseCANKD(DenseDistiller):
    """``loss_kd = WEIGHT * sum_levels MSE(IN(W(y) + align(s)), IN(t)) / 2`` with one cross-attention
    non-local block per level (segmentation: the last backbone stage with a 1x1 connector)."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        s = cfg.CANKD
        check_rules(s, CANKD_RULES, "CANKD.")
        self.weight = s.WEIGHT
        channels = select_levels(self.t_channels, s.LEVELS)
        small = [i for i, (_, h, w) in enumerate(self.t_shapes[:len(channels)]) if min(h, w) < s.POOL_SIZE]
        if s.POOL_SIZE < 1 or small:
            raise ConfigError(f"CANKD.POOL_SIZE {s.POOL_SIZE} does not fit the maps {small} of CANKD.LEVELS "
                              f"{s.LEVELS} (sizes {[tuple(t[1:]) for t in self.t_shapes]} at the probe size): "
                              "lower CANKD.LEVELS or POOL_SIZE.")
        self.align = align_convs(self.s_channels[:len(channels)], channels)
        self.blocks = nn.ModuleList(CrossAttentionNonLocal(c, s.AFFINITY, s.RESIDUAL, s.POOL_SIZE) for c in channels)

    def distill(self, s_levels, t_levels, batch, **extra):
        loss = sum(cankd_loss(block, align(s), t)
                   for align, block, s, t in zip(self.align, self.blocks, s_levels, t_levels))
        return {"loss_kd": self.weight * loss}
