"""FAM-KD: Pham et al., "Frequency Attention for Knowledge Distillation" (WACV 2024)."""

from typing import List

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import InRange, OneOf, check_rules
from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.feature_shapes import feature_shapes, require_preact
from mdistiller.errors import ConfigError
from mdistiller.frequency import FrequencyAttention, remove_dc
from mdistiller.losses.famkd import FUSIONS, FAMFusion, famkd_loss

FAMKD_DEFAULTS = CN()
FAMKD_DEFAULTS.CE_WEIGHT = 1.0
FAMKD_DEFAULTS.FAMKD_WEIGHT = 1.0  # 0.8 res56/res20, 5 the wrn40_2 pairs, 20 res32x4/res8x4 (authors' configs)
FAMKD_DEFAULTS.WARMUP_EPOCHS = 20
FAMKD_DEFAULTS.CUTON = 0.1  # half-size of the zeroed centre square, as a fraction of half the map size
FAMKD_DEFAULTS.STU_PREACT = False
FAMKD_DEFAULTS.NUM_STAGES = 3  # the deepest stages distilled (teacher feats[1..3] of the CIFAR ResNets) + pooled
FAMKD_DEFAULTS.MID_CHANNELS = []  # width per level, shallow first, pooled last; []: the student's channels
FAMKD_DEFAULTS.FUSION = "attention"  # "attention": the authors' local self-attention; "abf": ReviewKD's
FAMKD_DEFAULTS.POOLED_LOSS = True  # the pooled level enters the loss (authors' CIFAR configs; not r34 -> r18)
FAMKD_DEFAULTS.REMOVE_DC = False  # compare the maps without each channel's spatial mean (token features)


FAMKD_RULES = {"FUSION": OneOf(FUSIONS), "CUTON": InRange(0.0, 1.0)}


@register_distiller("FAMKD", FAMKD_DEFAULTS, FAMKD_RULES)
class FAMKD(Distiller):
    """``loss = CE_WEIGHT * CE + FAMKD_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * sum_i MSE(F_i, T_i)``.

    The student's last NUM_STAGES stage maps (``feats``, or ``preact_feats`` with STU_PREACT) and its
    pooled feature (as a 1x1 map) are fused deepest first by :class:`~mdistiller.losses.famkd.FAMFusion`
    (``hierarchy``): per level, a 1x1 conv to the level's width only where the student's channels
    differ from it, fusion with the deeper level (FUSION: the authors' local self-attention with the
    query from the deeper map, or ReviewKD's sigmoid attention), then the frequency attention module
    (:class:`~mdistiller.frequency.FrequencyAttention`, sized to the teacher map) -> BN -> ReLU. F_i are
    matched to the teacher's ``feats`` of the same stages and, with POOLED_LOSS, its pooled feature.

    Widths (MID_CHANNELS) default to the student's channels, as every configuration the authors
    released; the complex weights then hold ``C_s x C_t x h x w`` values per level. Their high-pass
    zeroes the centre ``2 int(CUTON h/2) x 2 int(CUTON w/2)`` of the shifted spectrum, which leaves maps
    under 20 x 20 unfiltered.

    ``REMOVE_DC True`` compares F_i and T_i with each channel's spatial mean removed: the MSE of their
    spectra without the DC coefficient (Parseval), which dominates token (ViT / Swin) features
    (:func:`~mdistiller.frequency.remove_dc`). The pooled level is all DC, so it needs POOLED_LOSS False.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.FAMKD
        check_rules(section, FAMKD_RULES, "FAMKD.")
        self.ce_loss_weight = section.CE_WEIGHT
        self.famkd_loss_weight = section.FAMKD_WEIGHT
        self.warmup_epochs = section.WARMUP_EPOCHS
        self.stu_preact = section.STU_PREACT
        self.pooled_loss = section.POOLED_LOSS
        self.remove_dc = section.REMOVE_DC
        if self.pooled_loss and self.remove_dc:
            raise ConfigError("FAMKD.POOLED_LOSS compares the pooled feature, all of which FAMKD.REMOVE_DC "
                              "removes: set FAMKD.POOLED_LOSS False.")
        size = image_size(cfg)
        shapes_s, shapes_t = feature_shapes(student, size), feature_shapes(teacher, size)
        if self.stu_preact:
            require_preact(shapes_s, student, "FAMKD.STU_PREACT", "set FAMKD.STU_PREACT False")
        maps_s = shapes_s["preact_feats" if self.stu_preact else "feats"][1:]
        maps_t = shapes_t["feats"][1:]
        self.num_stages = min(len(maps_s), len(maps_t), section.NUM_STAGES)
        maps_s, maps_t = maps_s[-self.num_stages:], maps_t[-self.num_stages:]
        in_channels = [s[1] for s in maps_s] + [shapes_s["pooled_feat"][1]]
        out_channels = [s[1] for s in maps_t] + [shapes_t["pooled_feat"][1]]
        out_shapes = [tuple(s[2:]) for s in maps_t] + [(1, 1)]
        mid_channels = list(section.MID_CHANNELS) or in_channels
        if len(mid_channels) != len(in_channels):
            raise ConfigError(f"FAMKD.MID_CHANNELS needs {len(in_channels)} widths here (NUM_STAGES "
                              f"{self.num_stages} stages, shallow first, then the pooled level), got {mid_channels}.")
        if section.FUSION == "attention" and any(c % 2 for c in mid_channels):
            raise ConfigError(f"FAMKD.MID_CHANNELS {mid_channels}: the attention fusion needs even widths.")
        self.hierarchy = FAMFusion(in_channels, mid_channels, out_channels, out_shapes, section.FUSION, section.CUTON)

    def get_extra_parameters(self) -> int:
        """Counted as the authors' class counts them: a complex weight is one parameter. It is held
        here as a real and an imaginary tensor (a complex parameter breaks the fp16 gradient
        scaler), so the imaginary parts are not counted again; the state dict holds both."""
        imaginary = sum(m.imag_weight.numel() for m in self.hierarchy.modules() if isinstance(m, FrequencyAttention))
        return super().get_extra_parameters() - imaginary

    def levels(self, features: dict, key: str) -> List[Tensor]:
        return features[key][-self.num_stages:] + [features["pooled_feat"][:, :, None, None]]

    def forward_train(self, image: Tensor, target: Tensor, epoch: int = 1, **batch):
        logits_student, features_student = self.student(image)
        _, features_teacher = self.teacher_forward(image)
        fused = self.hierarchy(self.levels(features_student, "preact_feats" if self.stu_preact else "feats"))
        targets = self.levels(features_teacher, "feats")
        if not self.pooled_loss:
            fused, targets = fused[:-1], targets[:-1]
        if self.remove_dc:
            fused, targets = [remove_dc(f) for f in fused], [remove_dc(t) for t in targets]
        ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.famkd_loss_weight * ramp * famkd_loss(fused, targets),
        }
        return logits_student, losses
