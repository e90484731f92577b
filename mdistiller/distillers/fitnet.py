"""FITNET: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.distillers.feature_shapes import feature_shapes, probe_image_size
from mdistiller.errors import ConfigError
from mdistiller.losses.fitnet import ConvReg

FITNET_DEFAULTS = CN()
FITNET_DEFAULTS.HINT_LAYER = 2  # an index into feats: 0 (stem) .. the last stage
FITNET_DEFAULTS.INPUT_SIZE = (32, 32)
FITNET_DEFAULTS.LOSS = loss_weights(feat_weight=100.0)


@register_distiller("FITNET", FITNET_DEFAULTS)
class FitNet(FeatureDistiller):
    """MSE between `conv_reg(student feats[HINT_LAYER])` and the teacher's `feats[HINT_LAYER]`.

    `conv_reg` (a :class:`~mdistiller.losses.fitnet.ConvReg`) is sized from a probe forward at
    DATASET.IMAGE_SIZE; FITNET.INPUT_SIZE is MDistiller's key for that size, kept for its YAML files.
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
        self.conv_reg = ConvReg(s_shapes[self.hint_layer], t_shapes[self.hint_layer])

    def feature_loss(self, feature_student, feature_teacher):
        f_s = self.conv_reg(feature_student["feats"][self.hint_layer])
        return F.mse_loss(f_s, feature_teacher["feats"][self.hint_layer])
