"""Plain training with cross-entropy; used to train teachers and the student-alone baseline."""

import torch
import torch.nn.functional as F

from mdistiller.distillers._base import Distiller, register_distiller


@register_distiller("NONE")
class Vanilla(Distiller):
    """Cross-entropy only; the teacher, if one is given, is ignored."""

    teacher_outputs = ()

    def __init__(self, student, teacher=None, cfg=None, **data_info) -> None:
        super().__init__(student, None)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        logits, _ = self.student(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}
