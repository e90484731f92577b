"""FreeKD on dense features: Zhang et al., "FreeKD: Knowledge Distillation via Semantic Frequency
Prompt", CVPR 2024 (math: mdistiller/frequency/, mdistiller/losses/freekd.py; prompt file and band
loss: mdistiller/distillers/frequency_prompts.py; stage 1: mdistiller_dense/prompt_learning.py)."""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.distillers.frequency_prompts import (PROMPT_RULES, PromptBandLoss, check_section, distilled_indices,
                                                     prompt_defaults)
from mdistiller.errors import ConfigError
from mdistiller.losses.spatial import resize_to
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller
from mdistiller_dense.hooks import FeatureCapture

FREEKD_DEFAULTS = prompt_defaults(num_stages=5, low_band=False, relation=False)
FREEKD_DEFAULTS.TOKENS = 6          # the authors' detection configs (paper: 2)
FREEKD_DEFAULTS.WEIGHT = 1.0        # mu: Faster R-CNN 1; RetinaNet 5, FCOS 10 (supplement A.1); segmentation 5
FREEKD_DEFAULTS.FEAT_WEIGHT = 5.0   # plain MSE on the aligned maps (authors' code: 5; FCOS 10)
FREEKD_DEFAULTS.REG_WEIGHT = 1.0    # smooth-L1 between the box-regression outputs (detectors)


@register_dense_distiller("FREEKD", FREEKD_DEFAULTS, PROMPT_RULES)
class DenseFREEKD(PromptBandLoss, DenseDistiller):
    """FreeKD's detection / segmentation recipe, stage 2 (stage 1: the ``"DENSE_PROMPTS"`` stage it
    declares, :class:`mdistiller_dense.prompt_learning.DensePromptStage`).

    On the last NUM_STAGES captured maps (default: every FPN level; segmenters ``backbone.layer4``),
    the student's map passes a 1x1 align conv to the teacher's channels (on every level, also when
    the channels are equal, as the authors' ``align_module``) and is resized to the teacher's size;

        loss_kd   = WEIGHT * sum_levels sum_k mean | M_{k,t} * a_k - M_{k,t} * b_k |   (frozen prompts)
        loss_feat = FEAT_WEIGHT * sum_levels MSE(align(s), t)
        loss_reg  = REG_WEIGHT * sum_levels mean smooth-L1(student box regression, teacher's)   (beta 1)

    The regression outputs compared are the dense heads' per FPN level (FCOS / RetinaNet ``head``
    bbox_regression split by level, Faster R-CNN's RPN deltas; the teacher's head runs on its FPN
    maps): one mean per level, summed, as the authors' distiller takes one loss per call of
    ``bbox_head.retina_reg``. LOW_BAND / RELATION select the paper's variants.
    """

    section = "FREEKD"
    stages = ("DENSE_PROMPTS",)

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        s = cfg.FREEKD
        check_section(s, "FREEKD")
        self.weights = (s.WEIGHT, s.FEAT_WEIGHT, s.REG_WEIGHT)
        self.teacher_indices = distilled_indices(len(self.t_channels), s.NUM_STAGES, "FREEKD", first=0)
        self.align = align_convs([self.s_channels[i] for i in self.teacher_indices],
                                 [self.t_channels[i] for i in self.teacher_indices], always=True)
        self.init_prompts(cfg, teacher)
        self.head_capture: Optional[FeatureCapture] = None
        if s.REG_WEIGHT > 0 and self.detection:
            if list(cfg.DISTILLER.STUDENT_FEATURES) or list(cfg.DISTILLER.TEACHER_FEATURES):
                raise ConfigError("FREEKD.REG_WEIGHT needs the FPN maps (the teacher's head runs on them): leave "
                                  "DISTILLER.*_FEATURES empty or set FREEKD.REG_WEIGHT 0.")
            self.head_capture = FeatureCapture(student, [self._regression_head(student)])

    @property
    def teacher_channels(self) -> List[int]:
        return [self.t_channels[i] for i in self.teacher_indices]

    @staticmethod
    def _regression_head(model: nn.Module) -> str:
        return "rpn.head" if hasattr(model, "rpn") else "head"

    @staticmethod
    def regression_levels(output, maps: Sequence[Tensor]) -> List[Tensor]:
        """A head's box-regression outputs, one tensor per FPN level of `maps`: the RPN's deltas as
        they come; the FCOS / RetinaNet head's (N, locations, 4) split by the levels' positions
        (times the anchors per position)."""
        if isinstance(output, dict):
            regression = output["bbox_regression"]
            positions = [m.shape[-2] * m.shape[-1] for m in maps]
            anchors = regression.shape[1] // sum(positions)
            return list(regression.split([p * anchors for p in positions], dim=1))
        return list(output[1])

    def distill(self, s_levels, t_levels, batch, **extra):
        weight, feat_weight, reg_weight = self.weights
        teacher_maps = [t_levels[i] for i in self.teacher_indices]
        student_maps = [resize_to(align(s_levels[i]), t.shape[-2:])
                        for align, i, t in zip(self.align, self.teacher_indices, teacher_maps)]
        losses = {"loss_kd": weight * self.frequency_loss(teacher_maps, student_maps)}
        if feat_weight > 0:
            losses["loss_feat"] = feat_weight * sum(F.mse_loss(s.float(), t.float())
                                                    for s, t in zip(student_maps, teacher_maps))
        if self.head_capture is not None:
            student_reg = self.regression_levels(self.head_capture.pop()[0], t_levels)
            head = self.teacher.rpn.head if hasattr(self.teacher, "rpn") else self.teacher.head
            with torch.no_grad():
                teacher_reg = self.regression_levels(head(t_levels), t_levels)
            losses["loss_reg"] = reg_weight * sum(F.smooth_l1_loss(s.float(), t.float())
                                                  for s, t in zip(student_reg, teacher_reg))
        return losses
