"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019."""

import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.distillers.feature_shapes import feature_shapes, probe_image_size
from mdistiller.losses.spatial import pool_to_smaller
from mdistiller.losses.vid import initial_log_scale, vid_loss, vid_regressor

VID_DEFAULTS = CN()
VID_DEFAULTS.LOSS = loss_weights(feat_weight=1.0)
VID_DEFAULTS.EPS = 1e-5
VID_DEFAULTS.INIT_PRED_VAR = 5.0
VID_DEFAULTS.INPUT_SIZE = (32, 32)


@register_distiller("VID", VID_DEFAULTS)
class VID(FeatureDistiller):
    """Per stage pair of `feats[1:]` (zipped from the first, the larger map pooled to the smaller),
    a regressor (`regressors.<i>`: three 1x1 convs) predicts the teacher map's mean; loss the
    Gaussian NLL with per-channel variance `softplus(log_scale) + EPS`, summed over stages.

    The log-scales start at the value giving variance INIT_PRED_VAR and, as in MDistiller (which
    keeps them in a plain list), are neither trained nor saved: non-persistent buffers here, so
    MDistiller checkpoints load and losses match.
    """

    cfg_section = "VID"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.eps = cfg.VID.EPS
        size = probe_image_size(cfg, cfg.VID.INPUT_SIZE, "VID.INPUT_SIZE")
        s_channels = [shape[1] for shape in feature_shapes(student, size)["feats"][1:]]
        t_channels = [shape[1] for shape in feature_shapes(teacher, size)["feats"][1:]]
        self.regressors = nn.ModuleList(vid_regressor(s, t) for s, t in zip(s_channels, t_channels))
        for i, t in enumerate(t_channels[: len(self.regressors)]):
            self.register_buffer(f"log_scale_{i}", initial_log_scale(t, cfg.VID.INIT_PRED_VAR, self.eps), persistent=False)

    @property
    def log_scales(self) -> list:
        return [getattr(self, f"log_scale_{i}") for i in range(len(self.regressors))]

    def feature_loss(self, feature_student, feature_teacher):
        loss = 0
        pairs = zip(feature_student["feats"][1:], feature_teacher["feats"][1:], self.regressors, self.log_scales)
        for f_s, f_t, regressor, log_scale in pairs:
            f_s, f_t = pool_to_smaller(f_s, f_t)
            loss = loss + vid_loss(regressor(f_s), f_t, log_scale, self.eps)
        return loss
