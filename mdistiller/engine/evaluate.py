"""Accuracy and loss of a predictor over a loader (used by the trainer and tools/eval.py)."""

import contextlib
from typing import Callable, ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F

from mdistiller.engine.utils import AverageMeter, accuracy


@torch.inference_mode()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
             autocast: Optional[Callable[[], ContextManager]] = None) -> Tuple[float, float, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `predict(image)` over `loader`."""
    autocast = autocast or contextlib.nullcontext
    top1_meter, top5_meter, loss_meter = AverageMeter(), AverageMeter(), AverageMeter()
    for batch in loader:
        image = batch[0].to(device, non_blocking=True).float()
        target = batch[1].to(device, non_blocking=True)
        with autocast():
            logits = predict(image)
        logits = logits.float()
        top1, top5 = accuracy(logits, target, topk=(1, 5))
        n = image.size(0)
        top1_meter.update(top1, n)
        top5_meter.update(top5, n)
        loss_meter.update(F.cross_entropy(logits, target).item(), n)
    return top1_meter.avg, top5_meter.avg, loss_meter.avg
