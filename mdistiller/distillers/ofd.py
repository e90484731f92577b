"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019."""

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.dataset.base import image_size
from mdistiller.distillers._feature import FeatureDistiller, loss_weights
from mdistiller.distillers.feature_shapes import feature_shapes, require_preact
from mdistiller.losses.ofd import ConnectorConvBN, ofd_loss, ofd_margin

OFD_DEFAULTS = CN()
OFD_DEFAULTS.LOSS = loss_weights(feat_weight=0.001)
OFD_DEFAULTS.CONNECTOR = CN()
OFD_DEFAULTS.CONNECTOR.KERNEL_SIZE = 1


def _last(items, n: int) -> list:
    """The last `n` entries (MDistiller aligns stage lists of unequal length at the deep end)."""
    return list(items)[len(items) - n:]


def stage_margin(bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    """The margins of a teacher stage of `channels` channels from the BN before its ReLU.

    A BN narrower than the stage normalises its trailing channels only: ShuffleV2's last unit
    concatenates an untouched half (an earlier ReLU output, never negative) with the transformed
    half. The untouched channels get margin 0: with a non-negative teacher response every
    non-positive margin gives the same partial L2 loss.
    """
    margin = ofd_margin(bn.weight, bn.bias)
    if margin.numel() > channels:
        raise ValueError(f"teacher BN before ReLU has {margin.numel()} channels, its stage only {channels}")
    return torch.cat([margin.new_zeros(channels - margin.numel()), margin])


@register_distiller("OFD", OFD_DEFAULTS)
class OFD(FeatureDistiller):
    """Connectors (conv + BN, `connectors.connectors.<i>`) on the student's `preact_feats[1:]`,
    partial L2 to the teacher's `preact_feats[1:]` beyond per-channel margins from the teacher's
    BN before each ReLU (eq. 4, 5); stage i of n weighted 1 / 2^(n-i-1).

    As in MDistiller the teacher follows the distiller's mode, so it runs in train mode (batch
    statistics) while training. Stage lists of unequal length are aligned at the deep end, the
    margins with them (MDistiller pairs the first margins with the last stages). ShuffleV2
    teachers work too (see :func:`stage_margin`).
    """

    cfg_section = "OFD"

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        why = "its loss is defined on the maps before the ReLU; use a zoo model or another method"
        for model in (teacher, student):
            require_preact(feature_shapes(model, image_size(cfg)), model, "OFD", why)
        t_channels = teacher.get_stage_channels()[1:]
        s_channels = student.get_stage_channels()[1:]
        self.num_stages = min(len(t_channels), len(s_channels))
        self.connectors = ConnectorConvBN(
            _last(s_channels, self.num_stages), _last(t_channels, self.num_stages),
            kernel_size=cfg.OFD.CONNECTOR.KERNEL_SIZE,
        )
        bns = _last(teacher.get_bn_before_relu(), self.num_stages)
        for i, (bn, channels) in enumerate(zip(bns, _last(t_channels, self.num_stages))):
            self.register_buffer(f"margin_{i}", stage_margin(bn, channels), persistent=False)

    @property
    def margins(self) -> list:
        return [getattr(self, f"margin_{i}") for i in range(self.num_stages)]

    def train(self, mode: bool = True) -> "OFD":
        """Every child, the teacher included, takes `mode` (MDistiller's OFD behaviour)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        nn.Module.train(self, mode)
        return self

    def feature_loss(self, feature_student, feature_teacher):
        g_s = self.connectors(_last(feature_student["preact_feats"][1:], self.num_stages))
        g_t = _last(feature_teacher["preact_feats"][1:], self.num_stages)
        return ofd_loss(g_s, g_t, self.margins)
