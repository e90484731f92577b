"""FITNET: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.distillers.feature_shapes import feature_shapes, probe_image_size
from mdistiller.errors import ConfigError
from mdistiller.losses.fitnet import ConvReg
from mdistiller.losses.spatial import common_size, pool_to_size

FITNET_DEFAULTS = CN()
FITNET_DEFAULTS.HINT_LAYER = 2  # an index into feats: 0 (stem) .. the last stage
FITNET_DEFAULTS.INPUT_SIZE = (32, 32)
FITNET_DEFAULTS.LOSS = loss_weights(feat_weight=100.0)


@register_distiller("FITNET", FITNET_DEFAULTS)
class FitNet(FeatureDistiller):
    """MSE between `conv_reg(student feats[HINT_LAYER])` and the teacher's `feats[HINT_LAYER]`.

    `conv_reg` (a :class:`~mdistiller.losses.fitnet.ConvReg`) is sized from a probe forward at
    DATASET.IMAGE_SIZE; FITNET.INPUT_SIZE is MDistiller's key for that size, kept for its YAML files.
    A pair ConvReg cannot bridge (the student's map smaller than the teacher's by more than 2x, or
    larger in one side and smaller in the other) has both maps average-pooled to their common size
    first, the larger one down (heterogeneous pairs; the zoo's pairs are bridged as MDistiller does).
    """

    cfg_section = "FITNET"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.hint_layer = cfg.FITNET.HINT_LAYER
        size = probe_image_size(cfg, cfg.FITNET.INPUT_SIZE, "FITNET.INPUT_SIZE")
        s_shapes = feature_shapes(student, size)["feats"]
        t_shapes = feature_shapes(teacher, size)["feats"]
        if not 0 <= self.hint_layer < min(len(s_shapes), len(t_shapes)):
            raise ConfigError(
                f"FITNET.HINT_LAYER {self.hint_layer} is out of range: {cfg.DISTILLER.STUDENT} has "
                f"{len(s_shapes)} feature maps, {cfg.DISTILLER.TEACHER} {len(t_shapes)} (0 is the stem)."
            )
        s_shape, t_shape = list(s_shapes[self.hint_layer]), list(t_shapes[self.hint_layer])
        self.pool_size = None if bridgeable(s_shape, t_shape) else common_size(s_shape, t_shape)
        if self.pool_size is not None:
            s_shape[-2:] = t_shape[-2:] = self.pool_size
        self.conv_reg = ConvReg(s_shape, t_shape)

    def feature_loss(self, feature_student, feature_teacher):
        f_s, f_t = feature_student["feats"][self.hint_layer], feature_teacher["feats"][self.hint_layer]
        if self.pool_size is not None:
            f_s, f_t = pool_to_size(f_s, self.pool_size), pool_to_size(f_t, self.pool_size)
        return F.mse_loss(self.conv_reg(f_s), f_t)


def bridgeable(s_shape, t_shape) -> bool:
    """Whether ConvReg maps the student's (h, w) exactly onto the teacher's: twice or half in both
    sides, or at least as large in both."""
    (s_h, s_w), (t_h, t_w) = s_shape[-2:], t_shape[-2:]
    return (s_h, s_w) == (2 * t_h, 2 * t_w) or (2 * s_h, 2 * s_w) == (t_h, t_w) or (s_h >= t_h and s_w >= t_w)
