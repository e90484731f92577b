"""Segment Anything's mask losses (Kirillov et al., "Segment Anything", ICCV 2023, section 3 and
appendix A "Losses and training"): a linear combination of focal and dice loss, 20 : 1, on each
predicted mask, and the mean squared error between the predicted IoU and the IoU of the predicted
mask with the ground truth; with several masks per prompt only the one of lowest mask loss is
backpropagated.
"""

from typing import Dict

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["dice_loss", "focal_loss", "mask_iou", "sam_mask_loss"]


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per mask, the mean over pixels of the sigmoid focal loss (alpha 0.25, gamma 2; Lin et al. 2017);
    ``logits`` and ``target`` (N, ..., H, W), the result (N, ...)."""
    return sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none").flatten(-2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Per mask, ``1 - (2 sum(p t) + eps) / (sum p + sum t + eps)`` with ``p = sigmoid(logits)``
    (Milletari et al., "V-Net", 2016)."""
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1.0 - (2.0 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """Per mask, |{logits > 0} and target| / |{logits > 0} or target| (0 where both are empty)."""
    pred = (logits > 0).flatten(-2)
    t = target.flatten(-2) > 0.5
    union = (pred | t).sum(-1)
    return torch.where(union > 0, (pred & t).sum(-1) / union.clamp(min=1), torch.zeros_like(union, dtype=torch.float))


def sam_mask_loss(logits: Tensor, target: Tensor, iou_pred: Tensor, focal_weight: float = 20.0,
                  dice_weight: float = 1.0, iou_weight: float = 1.0) -> Dict[str, Tensor]:
    """SAM's loss of ``logits`` (N, M, H, W: M candidate masks per prompt) against ``target``
    (N, H, W) and the IoU predictions ``iou_pred`` (N, M), averaged over the N prompts:

        loss_focal + loss_dice = min_m (focal_weight * focal_m + dice_weight * dice_m)   (the min's terms)
        loss_iou = iou_weight * mean_m (iou_pred_m - IoU(logits_m > 0, target))^2       (IoU not differentiated)
    """
    target = target.float()[:, None].expand_as(logits)
    focal, dice = focal_loss(logits.float(), target), dice_loss(logits.float(), target)
    best = (focal_weight * focal + dice_weight * dice).argmin(1, keepdim=True)
    with torch.no_grad():
        iou = mask_iou(logits, target)
    return {"loss_focal": focal_weight * focal.gather(1, best).mean(),
            "loss_dice": dice_weight * dice.gather(1, best).mean(),
            "loss_iou": iou_weight * (iou_pred.float() - iou).pow(2).mean()}
