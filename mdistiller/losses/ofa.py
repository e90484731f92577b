"""OFA-KD's target-enhanced loss: Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous
Architectures in Knowledge Distillation" (NeurIPS 2023), Eq. 4 of the paper.

With p_s = softmax(z_s / T), p_t = softmax(z_t / T) and the target class c* of each sample::

    L_OFA = mean_batch sum_c -w_c log p_s,c,   w_c* = (p_t,c* + 1)^eps - 1,   w_c = p_t,c^eps (c != c*)

eps = 1 is the cross-entropy against the teacher's distribution (KD up to a constant, with no T^2
factor); eps > 1 enlarges the target-class weight and shrinks the others, the more so the more
confident the teacher ("adaptive target enhancement").
"""

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss
from mdistiller.losses.targets import class_index

__all__ = ["ofa_loss"]


@float32_loss
def ofa_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor,
             eps: float, temperature: float = 1.0) -> torch.Tensor:
    """OFA's loss of one output (``target``: (N,) labels or (N, K) soft targets).

    Computed in float32 with ``log_softmax`` (the authors take the log of a softmax, which
    underflows to -inf under fp16 autocast).
    """
    log_p_student = F.log_softmax(logits_student / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher / temperature, dim=1)
    target_mask = F.one_hot(class_index(target), logits_student.shape[1]).to(p_teacher.dtype)
    weight = (p_teacher + target_mask) ** eps - target_mask
    return -(weight * log_p_student).sum(dim=1).mean()
