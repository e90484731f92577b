"""AFPKD on dense features: Zhang et al., "Knowledge distillation with adaptive frequency prompting",
The Computer Journal 68(11), 2025 (its dense claim: FCOS-R50 +4.5 AP on COCO). The pieces are the
classification method's (mdistiller/distillers/afpkd.py): FreeKD's frozen frequency prompts and
relation weights (mdistiller/distillers/frequency_prompts.py), ReviewKD's top-down fusion
(mdistiller/losses/reviewkd.py); stage 1 is dense FREEKD's (mdistiller_dense/prompt_learning.py)."""

from yacs.config import CfgNode as CN

from mdistiller.distillers.frequency_prompts import (PROMPT_RULES, PromptBandLoss, check_section, distilled_indices,
                                                     prompt_defaults)
from mdistiller.losses.reviewkd import ReviewFusion
from mdistiller.losses.spatial import resize_to
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller

AFPKD_DEFAULTS = prompt_defaults(num_stages=5, low_band=True, relation=True)
AFPKD_DEFAULTS.TOKENS = 6      # dense FREEKD's detection setting (the paper gives none)
AFPKD_DEFAULTS.WEIGHT = 10.0   # FreeKD's FCOS weight (supplement A.1; the paper gives none)
AFPKD_DEFAULTS.FUSION = True   # top-down ReviewKD fusion over the FPN levels; False: a 1x1 conv per level


@register_dense_distiller("AFPKD", AFPKD_DEFAULTS, PROMPT_RULES)
class DenseAFPKD(PromptBandLoss, DenseDistiller):
    """Adaptive frequency prompting with hierarchical fusion over the FPN levels, stage 2.

    The student's last NUM_STAGES captured maps (default every FPN level) are fused from the deepest
    level up by ReviewKD's attention-based fusion (the classification method's ``abfs``), each output
    at its teacher level's channels and size; with F_i the fused maps and T_i the teacher's,

        loss_kd = WEIGHT * sum_levels L_FreeKD(F_i, T_i)   (frozen prompts, LL band and relation weights)

    Stage 1 (the prompts in the teacher) is dense FREEKD's ``"DENSE_PROMPTS"`` stage on the AFPKD
    section. Choices where the paper is silent: as the classification method (fusion width
    ``min(512, channels of the deepest student map)``, LOW_BAND and RELATION on), no warm-up ramp (the
    detection schedules have their own warm-up), ``FUSION False`` = FreeKD's per-level 1x1 align conv.
    """

    section = "AFPKD"
    stages = ("DENSE_PROMPTS",)

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        s = cfg.AFPKD
        check_section(s, "AFPKD")
        self.weight = s.WEIGHT
        self.teacher_indices = distilled_indices(len(self.t_channels), s.NUM_STAGES, "AFPKD", first=0)
        s_channels = [self.s_channels[i] for i in self.teacher_indices]
        if s.FUSION:
            self.abfs = ReviewFusion(s_channels, min(512, s_channels[-1]), self.teacher_channels,
                                     [self.t_shapes[i][1:] for i in self.teacher_indices])
        else:
            self.abfs = align_convs(s_channels, self.teacher_channels, always=True)
        self.init_prompts(cfg, teacher)

    @property
    def teacher_channels(self):
        return [self.t_channels[i] for i in self.teacher_indices]

    def distill(self, s_levels, t_levels, batch, **extra):
        teacher_maps = [t_levels[i] for i in self.teacher_indices]
        student_maps = [s_levels[i] for i in self.teacher_indices]
        sizes = [t.shape[-2:] for t in teacher_maps]
        if isinstance(self.abfs, ReviewFusion):
            fused = self.abfs(student_maps, sizes)
        else:
            fused = [resize_to(align(x), size) for align, x, size in zip(self.abfs, student_maps, sizes)]
        return {"loss_kd": self.weight * self.frequency_loss(teacher_maps, fused)}
