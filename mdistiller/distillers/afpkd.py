"""AFPKD: Zhang et al., "Knowledge distillation with adaptive frequency prompting", The Computer
Journal 68(11), 2025 (no public code or full text; built from the abstract, choices below)."""

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers._base import register_distiller
from mdistiller.distillers.frequency_prompts import PROMPT_RULES, PromptDistiller, prompt_defaults
from mdistiller.losses.reviewkd import ReviewFusion
from mdistiller.losses.spatial import resize_to

AFPKD_DEFAULTS = prompt_defaults(num_stages=3, low_band=True, relation=True)
AFPKD_DEFAULTS.FUSION = True  # top-down ReviewKD fusion of the student's stages; False: a 1x1 conv per stage
AFPKD_DEFAULTS.WARMUP_EPOCHS = 20  # the loss ramps as min(epoch / WARMUP_EPOCHS, 1), as ReviewKD's
AFPKD_DEFAULTS.LOSS = CN()
AFPKD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
AFPKD_DEFAULTS.LOSS.FEAT_WEIGHT = 1.0


@register_distiller("AFPKD", AFPKD_DEFAULTS, PROMPT_RULES)
class AFPKD(PromptDistiller):
    """Adaptive frequency prompting with hierarchical feature fusion.

    The abstract names (1) a frequency prompt fine-tuned in the teacher against its frequency bands
    that, in distillation, gives pixel-wise masks of the pixels of interest in each band, with
    channel-level position-sensitive weights: FreeKD's prompt and relation weights (paper variant,
    ``LOW_BAND True`` and ``RELATION True`` by default; the same stage 1, ``tools/train_prompt.py``);
    (2) a module that hierarchically fuses the student's multi-level features: ReviewKD's top-down
    attention-based fusion (:class:`~mdistiller.losses.reviewkd.ReviewFusion`, ``abfs``) of the last
    ``NUM_STAGES`` student stages, each output at the matching teacher stage's channels and size.
    With F_i the fused maps and T_i the teacher's ``feats`` of those stages:

        loss_kd = FEAT_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * sum_i L_FreeKD(F_i, T_i)
        loss_ce = CE_WEIGHT * CE(student logits, y)

    Choices where the abstract is silent: every spatial stage is distilled (``NUM_STAGES 3``; the
    pooled feature has no frequency content and is left out), the fusion width is ReviewKD's
    ``min(512, channels of the deepest student stage)``, the loss ramps like ReviewKD's, and
    ``FUSION False`` replaces the fusion by FreeKD's per-stage 1x1 align conv (the ablation of (2)).
    """

    section = "AFPKD"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher, cfg)
        self.warmup_epochs = cfg.AFPKD.WARMUP_EPOCHS
        s_channels, t_channels = self.student_channels, self.teacher_channels
        if cfg.AFPKD.FUSION:
            self.abfs = ReviewFusion(s_channels, min(512, s_channels[-1]), t_channels,
                                     [(h, w) for _, h, w in self.teacher_map_shapes])
        else:
            self.abfs = nn.ModuleList(nn.Conv2d(s, t, kernel_size=1) for s, t in zip(s_channels, t_channels))
        self.init_prompts(cfg, teacher)

    def student_maps(self, feats: dict, sizes) -> list:
        """The student's distilled stages, fused (or aligned) to the teacher's channels and sizes."""
        maps = [feats["feats"][i] for i in self.student_indices]
        if isinstance(self.abfs, ReviewFusion):
            return self.abfs(maps)
        return [resize_to(align(x), size) for align, x, size in zip(self.abfs, maps, sizes)]

    def forward_train(self, image: Tensor, target: Tensor, epoch: int = 1, **batch):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        teacher_maps = [feats_teacher["feats"][i] for i in self.teacher_indices]
        student_maps = self.student_maps(feats_student, [t.shape[-2:] for t in teacher_maps])
        ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * ramp * self.frequency_loss(teacher_maps, student_maps),
        }
        return logits_student, losses
