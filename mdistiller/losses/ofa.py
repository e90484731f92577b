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

from mdistiller.losses.kd import at_least_float32

__all__ = ["target_classes", "ofa_loss"]


def target_classes(target: torch.Tensor) -> torch.Tensor:
    """The class of each sample: ``target`` itself for (N,) labels, the argmax of (N, K) soft targets.

    Under mixup / cutmix the mixed sample whose weight is above one half wins (as in the authors'
    code); label smoothing leaves the class unchanged.
    """
    return target.argmax(dim=1) if target.dim() == 2 else target


def ofa_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor,
             eps: float, temperature: float = 1.0) -> torch.Tensor:
    """OFA's loss of one output (``target``: (N,) labels or (N, K) soft targets).

    Computed in at least float32 with ``log_softmax`` (the authors take the log of a softmax, which
    underflows to -inf under fp16 autocast).
    """
    logits_student, logits_teacher = at_least_float32(logits_student), at_least_float32(logits_teacher)
    log_p_student = F.log_softmax(logits_student / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher / temperature, dim=1)
    target_mask = F.one_hot(target_classes(target), logits_student.shape[1]).to(p_teacher.dtype)
    weight = (p_teacher + target_mask) ** eps - target_mask
    return -(weight * log_p_student).sum(dim=1).mean()
