"""DeiT's distillation through the distillation token: Touvron et al., "Training data-efficient image
transformers & distillation through attention" (ICML 2021), Section 4.

The student has two heads, on the class token (z_cls) and on the distillation token (z_dist);
with psi the softmax, y the label and Z_t the teacher's logits::

    soft:  L = (1 - alpha) CE(psi(z_cls), y) + alpha tau^2 KL(psi(Z_t / tau) || psi(z_dist / tau))
    hard:  L = (1 - alpha) CE(psi(z_cls), y) + alpha CE(psi(z_dist), argmax Z_t)

(the paper's Eq. 2 and 3 with alpha = 1/2 in the hard case). The released code sums the soft KL
over the batch and the classes and divides by their product (B * K), an extra 1/K against the
paper's per-sample KL: ``soft_distillation_loss(..., per_class_mean=True)``.
"""

import torch
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss

__all__ = ["hard_distillation_loss", "soft_distillation_loss", "late_fusion"]


@float32_loss
def hard_distillation_loss(logits_dist: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    """CE of the distillation head against the teacher's arg-max class."""
    return F.cross_entropy(logits_dist, logits_teacher.argmax(dim=1))


@float32_loss
def soft_distillation_loss(logits_dist: torch.Tensor, logits_teacher: torch.Tensor, temperature: float,
                           per_class_mean: bool = True) -> torch.Tensor:
    """``tau^2 KL(psi(Z_t / tau) || psi(z_dist / tau))`` summed over classes, averaged over the batch
    (``per_class_mean`` False, the paper) or over batch and classes (True, the released code)."""
    log_p_dist = F.log_softmax(logits_dist / temperature, dim=1)
    log_p_teacher = F.log_softmax(logits_teacher / temperature, dim=1)
    kl = F.kl_div(log_p_dist, log_p_teacher, reduction="sum", log_target=True)
    count = logits_dist.numel() if per_class_mean else logits_dist.shape[0]
    return kl * temperature**2 / count


@float32_loss
def late_fusion(logits_cls: torch.Tensor, logits_dist: torch.Tensor, softmax: bool = False) -> torch.Tensor:
    """The two heads' joint prediction: the mean of their logits (the released code), or with
    ``softmax`` the log of the mean of their softmax outputs (the paper's late fusion; the log keeps
    it a log-probability, so its arg-max and its cross-entropy are those of the fused distribution)."""
    if not softmax:
        return (logits_cls + logits_dist) / 2
    p = (F.softmax(logits_cls, dim=1) + F.softmax(logits_dist, dim=1)) / 2
    return torch.log(p)
