"""Hard and soft targets.

Under mixup, cutmix or label smoothing a training target is a (B, K) distribution instead of (B,)
class indices. ``torch.nn.functional.cross_entropy`` takes either form (the soft one is timm's
``SoftTargetCrossEntropy``), so most methods need nothing; a method that needs one class per sample
(DKD's target / non-target split, OFA's target mask) takes :func:`class_index`, the argmax of the
soft target: under mixup the sample whose weight is above one half, as OFA-KD's and DKD's code do.
"""

from torch import Tensor

__all__ = ["class_index"]


def class_index(target: Tensor) -> Tensor:
    """(B,) class indices: ``target`` itself, or the argmax of a (B, K) soft target."""
    return target.argmax(dim=1) if target.dim() == 2 else target
