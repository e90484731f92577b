"""FAM-KD: Pham et al., "Frequency Attention for Knowledge Distillation" (WACV 2024)."""

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.frequency import FrequencyAttention
from mdistiller.losses.famkd import famkd_loss
from mdistiller.losses.reviewkd import ReviewFusion

FAMKD_DEFAULTS = CN()
FAMKD_DEFAULTS.CE_WEIGHT = 1.0
FAMKD_DEFAULTS.FAMKD_WEIGHT = 1.0  # 0.8 res56/res20, 5 the wrn40_2 pairs (authors' configs)
FAMKD_DEFAULTS.WARMUP_EPOCHS = 20
FAMKD_DEFAULTS.CUTON = 0.1  # half-size of the zeroed centre square, as a fraction of half the map size
FAMKD_DEFAULTS.STU_PREACT = False
FAMKD_DEFAULTS.NUM_STAGES = 3  # the deepest stages distilled (teacher feats[1..3] of the CIFAR ResNets) + pooled
FAMKD_DEFAULTS.MID_CHANNEL = 0  # width of the fused maps; 0: ReviewKD's min(512, student pooled channels)


def frequency_attention_head(cuton: float):
    """The output of each fusion level: frequency attention module -> BN -> ReLU (authors' ``conv2``)."""

    def build(mid_channel: int, out_channel: int, size: Tuple[int, int]) -> nn.Module:
        return nn.Sequential(FrequencyAttention(mid_channel, out_channel, size, cuton),
                             nn.BatchNorm2d(out_channel), nn.ReLU(inplace=True))

    return build


@register_distiller("FAMKD", FAMKD_DEFAULTS)
class FAMKD(Distiller):
    """``loss = CE_WEIGHT * CE + FAMKD_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * sum_i MSE(F_i, T_i)``.

    The student's stage maps (``feats``, or ``preact_feats`` with STU_PREACT) and its pooled feature
    (as a 1x1 map) are fused deepest first as in ReviewKD
    (:class:`~mdistiller.losses.reviewkd.ReviewFusion`, ``abfs``; fused width MID_CHANNEL, by default
    ReviewKD's ``min(512, student pooled channels)``), but each level's output passes the frequency
    attention module (:class:`~mdistiller.frequency.FrequencyAttention`, sized to the teacher map)
    -> BN -> ReLU; F_i are matched to the teacher's ``feats`` of the same stages and its pooled
    feature T_i. Levels pair up from the deepest stage, NUM_STAGES of them (3: the CIFAR ResNets'
    feats[1..3], as the authors). The complex weights hold MID_CHANNEL x C_t x h x w values per
    level, large on wide, large maps (33.5M for res32x4's 64 x 32 x 32 stage at width 256).

    The authors fuse with a stand-alone self-attention convolution; here ReviewKD's attention-based
    fusion block is reused. Their high-pass zeroes the centre ``2 int(CUTON h/2) x 2 int(CUTON w/2)``
    of the shifted spectrum, which leaves maps under 20 x 20 unfiltered.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.FAMKD
        self.ce_loss_weight = section.CE_WEIGHT
        self.famkd_loss_weight = section.FAMKD_WEIGHT
        self.warmup_epochs = section.WARMUP_EPOCHS
        self.stu_preact = section.STU_PREACT
        size = image_size(cfg)
        shapes_s, shapes_t = feature_shapes(student, size), feature_shapes(teacher, size)
        maps_s = shapes_s["preact_feats" if self.stu_preact else "feats"][1:]
        maps_t = shapes_t["feats"][1:]
        self.num_stages = min(len(maps_s), len(maps_t), section.NUM_STAGES)
        maps_s, maps_t = maps_s[-self.num_stages:], maps_t[-self.num_stages:]
        in_channels = [s[1] for s in maps_s] + [shapes_s["pooled_feat"][1]]
        out_channels = [s[1] for s in maps_t] + [shapes_t["pooled_feat"][1]]
        out_shapes = [tuple(s[2:]) for s in maps_t] + [(1, 1)]
        mid_channel = section.MID_CHANNEL or min(512, in_channels[-1])
        self.abfs = ReviewFusion(in_channels, mid_channel, out_channels, out_shapes,
                                 head=frequency_attention_head(section.CUTON))

    def levels(self, features: dict, key: str) -> list:
        return features[key][-self.num_stages:] + [features["pooled_feat"][:, :, None, None]]

    def forward_train(self, image: Tensor, target: Tensor, epoch: int = 1, **batch):
        logits_student, features_student = self.student(image)
        _, features_teacher = self.teacher_forward(image)
        fused = self.abfs(self.levels(features_student, "preact_feats" if self.stu_preact else "feats"))
        ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.famkd_loss_weight * ramp * famkd_loss(fused, self.levels(features_teacher, "feats")),
        }
        return logits_student, losses
