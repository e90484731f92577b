"""Vanilla knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss


@float32_loss
def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, KL summed over classes and averaged over the batch.

    Computed in at least float32: CPU autocast leaves (log_)softmax in bfloat16, whose rounding
    (~1e-2 on log-probabilities) is the size of the KL between close distributions.
    """
    log_p_student = F.log_softmax(logits_student / temperature, dim=1)
    log_p_teacher = F.log_softmax(logits_teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(1)
    return kl.mean() * temperature**2
