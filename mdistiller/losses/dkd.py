"""Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022)."""

import torch
import torch.nn.functional as F

from mdistiller.losses.targets import class_index


def _binary_log_probs(log_probs: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) log-probabilities of [target class, all other classes together].

    The non-target mass is a log-sum-exp over the non-target log-probabilities, so it stays finite
    when the softmax saturates (a plain `log(1 - p_target)` is `log(0)` there).
    """
    log_target = log_probs.masked_select(target_mask).unsqueeze(1)
    log_other = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def _kl_from_logs(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """`sum_b sum_c p_t (log p_t - log p_s)` from log-probabilities (summed over the batch)."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)


def dkd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """`alpha * TCKD + beta * NCKD` (Eq. 7 of the paper), each `T^2 * KL / batch`.

    TCKD is the KL between the binary distributions [p_target, 1 - p_target] of teacher and
    student; NCKD the KL between their softmaxes over the non-target classes only. Both are taken
    in log space, so they stay finite for saturated softmaxes and for two-class problems (where
    NCKD is exactly 0). Equal to MDistiller's `dkd_loss` (which masks the target logit with -1000)
    wherever that one is finite. `target` is (B,) classes or a (B, K) soft target (mixup, label
    smoothing), whose argmax class then splits target from non-target.
    """
    z_s = logits_student.float() / temperature
    z_t = logits_teacher.float() / temperature
    batch, num_classes = z_s.shape
    target_mask = F.one_hot(class_index(target).reshape(-1), num_classes).bool()

    tckd = _kl_from_logs(_binary_log_probs(F.log_softmax(z_s, dim=1), target_mask),
                         _binary_log_probs(F.log_softmax(z_t, dim=1), target_mask))
    other_s = z_s.masked_select(~target_mask).view(batch, num_classes - 1)
    other_t = z_t.masked_select(~target_mask).view(batch, num_classes - 1)
    nckd = _kl_from_logs(F.log_softmax(other_s, dim=1), F.log_softmax(other_t, dim=1))
    return (alpha * tckd + beta * nckd) * temperature**2 / batch
