"""FreeKD: Zhang et al., "FreeKD: Knowledge Distillation via Semantic Frequency Prompt", CVPR 2024."""

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers.frequency_prompts import PROMPT_RULES, PromptDistiller, prompt_defaults
from mdistiller.frequency import remove_dc
from mdistiller.losses.spatial import common_size, pool_to_size, resize_to, upsampled_at_most

FREEKD_DEFAULTS = prompt_defaults(num_stages=2, low_band=False, relation=False)
FREEKD_DEFAULTS.REMOVE_DC = False
FREEKD_DEFAULTS.UPSAMPLE_STUDENT = True  # authors' code; False: pool the larger map down, never upsample
FREEKD_DEFAULTS.LOSS = CN()
FREEKD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
FREEKD_DEFAULTS.LOSS.FEAT_WEIGHT = 1.0

MAX_UPSAMPLING = 2  # UPSAMPLE_STUDENT upsamples a student map at most this many times per side


@register_distiller("FREEKD", FREEKD_DEFAULTS, PROMPT_RULES)
class FreeKD(PromptDistiller):
    """FreeKD for classification, on the last ``NUM_STAGES`` entries of ``feats``.

    Stage 1 (:meth:`prepare`, ``tools/train_prompt.py``) learns a frequency prompt per distilled
    teacher feature; here it is loaded and frozen. For each distilled level, the student map is
    aligned to the teacher's channels by a 1x1 conv (when they differ) and brought to the teacher's
    spatial size (average pooling if larger, bilinear upsampling if smaller: the teacher's bands
    define the masks); both maps go through a ``DWT_LEVELS``-level Haar DWT, and

        loss_kd = FEAT_WEIGHT * sum_levels sum_k mean | M_{k,t} * a_k - M_{k,t} * b_k |

    over the high-band levels k, with masks ``M_k = sigmoid(P_k R_k)`` from the frozen prompt and the
    teacher band (:class:`~mdistiller.distillers.frequency_prompts.PromptDistiller`). Variants: the authors'
    code (default: ``LOW_BAND False``, ``RELATION False``) and the paper (``LOW_BAND True``: LL_L too;
    ``RELATION True``: channel weights ``w_t * w_s``). ``loss_ce = CE_WEIGHT * CE``.

    ``UPSAMPLE_STUDENT False`` never upsamples: the larger of the two maps is average-pooled to the
    other's size, teacher included (the masks then come from the pooled teacher's bands). Use it
    where a student map is smaller than the teacher's (a ViT's grid against a CNN's earlier stage):
    interpolation adds no high-frequency content, so its bands would be empty. With
    ``UPSAMPLE_STUDENT True`` a level whose student map is more than ``MAX_UPSAMPLING`` (2) times
    smaller than the teacher's in a side, or larger in one side and smaller in the other (a Swin
    student's 2x2 stage against a CNN's 16x16), is pooled the same way instead: such a map upsampled
    would hold nothing in most of the teacher's bands.

    ``REMOVE_DC True`` subtracts each channel's spatial mean from both aligned maps before the DWT
    (their DC term, which dominates token features; :func:`~mdistiller.frequency.remove_dc`). Haar
    detail bands ignore a constant unless a level pads an odd size, so on maps whose sides stay even
    through the DWT levels this changes the loss only through LL_L (``LOW_BAND True``).
    """

    section = "FREEKD"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.align = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1) if s != t else nn.Identity()
            for s, t in zip(self.student_channels, self.teacher_channels)
        )
        self.init_prompts(cfg, teacher)
        self.remove_dc = cfg.FREEKD.REMOVE_DC
        self.upsample_student = cfg.FREEKD.UPSAMPLE_STUDENT

    def aligned_maps(self, feats_teacher: dict, feats_student: dict):
        """(teacher maps, student maps) of the distilled levels, at equal channels and sizes."""
        teacher_maps = [feats_teacher["feats"][i] for i in self.teacher_indices]
        student_maps = [align(feats_student["feats"][i]) for align, i in zip(self.align, self.student_indices)]
        aligned_t, aligned_s = [], []
        for s, t in zip(student_maps, teacher_maps):
            if self.upsample_student and upsampled_at_most(s.shape, t.shape[-2:], MAX_UPSAMPLING):
                aligned_t.append(t)
                aligned_s.append(resize_to(s, t.shape[-2:]))
            else:
                size = common_size(s.shape, t.shape)
                aligned_t.append(pool_to_size(t, size))
                aligned_s.append(pool_to_size(s, size))
        return aligned_t, aligned_s

    def forward_train(self, image: Tensor, target: Tensor, **batch):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        teacher_maps, student_maps = self.aligned_maps(feats_teacher, feats_student)
        if self.remove_dc:
            teacher_maps, student_maps = [remove_dc(t) for t in teacher_maps], [remove_dc(s) for s in student_maps]
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * self.frequency_loss(teacher_maps, student_maps),
        }
        return logits_student, losses
