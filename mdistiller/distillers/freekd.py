"""FreeKD: Zhang et al., "FreeKD: Knowledge Distillation via Semantic Frequency Prompt", CVPR 2024."""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers._prompts import check_section, distilled_indices, load_prompts, prompt_defaults
from mdistiller.distillers._shapes import feature_shapes
from mdistiller.frequency.prompt import FrequencyBands
from mdistiller.losses.freekd import ChannelRelation, freekd_loss, relation_weights

FREEKD_DEFAULTS = prompt_defaults()
FREEKD_DEFAULTS.LOW_BAND = False  # paper: also distil LL_L; authors' code: high bands only
FREEKD_DEFAULTS.RELATION = False  # paper: channel weights w_t * w_s; authors' code: none
FREEKD_DEFAULTS.LOSS = CN()
FREEKD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
FREEKD_DEFAULTS.LOSS.FEAT_WEIGHT = 1.0


def match_size(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """`x` at spatial `size`: average-pooled when larger, bilinearly upsampled when smaller."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_distiller("FREEKD", FREEKD_DEFAULTS)
class FreeKD(Distiller):
    """FreeKD for classification, on the last ``NUM_STAGES`` entries of ``feats``.

    Stage 1 (:meth:`prepare`, ``tools/train_prompt.py``) learns a frequency prompt per distilled
    teacher feature; here it is loaded and frozen. For each distilled level, the student map is
    aligned to the teacher's channels by a 1x1 conv (when they differ) and brought to the teacher's
    spatial size (average pooling if larger, bilinear upsampling if smaller: the teacher's bands
    define the masks); both maps go through a ``DWT_LEVELS``-level Haar DWT, and

        loss_kd = FEAT_WEIGHT * sum_levels sum_k mean | M_{k,t} * a_k - M_{k,t} * b_k |

    over the high-band levels k (plus LL with ``LOW_BAND``), with masks ``M_k = sigmoid(P_k R_k)``
    from the frozen prompt and the teacher band (authors' code). With
    ``RELATION`` each channel is weighted by ``w_t * w_s`` (paper; see
    :class:`~mdistiller.losses.freekd.ChannelRelation`), the relation of each distilled map with the
    next deeper distilled map (the deepest with itself). ``loss_ce = CE_WEIGHT * CE``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.FREEKD
        check_section(section, "FREEKD")
        self.levels = section.DWT_LEVELS
        self.low_band = section.LOW_BAND
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT
        teacher_shapes = [s[1:] for s in feature_shapes(teacher, cfg.DATASET.IMAGE_SIZE)["feats"]]
        student_shapes = [s[1:] for s in feature_shapes(student, cfg.DATASET.IMAGE_SIZE)["feats"]]
        self.teacher_indices = distilled_indices(len(teacher_shapes), section.NUM_STAGES)
        self.student_indices = distilled_indices(len(student_shapes), section.NUM_STAGES)
        t_channels = [teacher_shapes[i][0] for i in self.teacher_indices]
        s_channels = [student_shapes[i][0] for i in self.student_indices]
        self.align = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1) if s != t else nn.Identity() for s, t in zip(s_channels, t_channels)
        )
        self.prompts = load_prompts(cfg, "FREEKD", teacher, self.teacher_indices, t_channels)
        self.relation_t: Optional[nn.ModuleList] = None
        self.relation_s: Optional[nn.ModuleList] = None
        if section.RELATION:
            deeper = t_channels[1:] + t_channels[-1:]
            self.relation_t = nn.ModuleList(ChannelRelation(c, d) for c, d in zip(t_channels, deeper))
            self.relation_s = nn.ModuleList(ChannelRelation(c, d) for c, d in zip(t_channels, deeper))

    @classmethod
    def prepare(cls, cfg: CN) -> Optional[str]:
        """Stage 1: learn the prompts in the teacher and save them where stage 2 looks (returns the path)."""
        from mdistiller.engine.prompt_learning import learn_prompts  # the engine imports the distillers

        return learn_prompts(cfg, "FREEKD")

    def channel_weights(self, teacher_maps: Sequence[Tensor], student_maps: Sequence[Tensor]) -> List[Optional[Tensor]]:
        """Per level, ``w_t * w_s`` normalised to mean 1 (RELATION on), else None."""
        if self.relation_t is None:
            return [None] * len(teacher_maps)
        weights = []
        for i, (rel_t, rel_s) in enumerate(zip(self.relation_t, self.relation_s)):
            deep = min(i + 1, len(teacher_maps) - 1)
            w_t = rel_t(teacher_maps[i], teacher_maps[deep])
            w_s = rel_s(student_maps[i], student_maps[deep])
            weights.append(relation_weights(w_t, w_s))
        return weights

    def forward_train(self, image: Tensor, target: Tensor, **batch):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        teacher_maps = [feats_teacher["feats"][i] for i in self.teacher_indices]
        student_maps = [
            match_size(align(feats_student["feats"][i]), t.shape[-2:])
            for align, i, t in zip(self.align, self.student_indices, teacher_maps)
        ]
        loss_feat = 0.0
        for prompt, t_map, s_map, weights in zip(self.prompts, teacher_maps, student_maps,
                                                 self.channel_weights(teacher_maps, student_maps)):
            teacher_bands = FrequencyBands.of(t_map, self.levels)
            with torch.no_grad():
                masks = prompt.masks(teacher_bands)
            loss_feat = loss_feat + freekd_loss(masks, teacher_bands, FrequencyBands.of(s_map, self.levels),
                                                self.low_band, weights)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * loss_feat,
        }
        return logits_student, losses
