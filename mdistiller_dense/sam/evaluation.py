"""Segment Anything evaluation: mIoU of the masks predicted from box prompts and from one-point
prompts (MobileSAM's comparison with SAM, Zhang et al. 2023, section 4), the encoder's embedding
agreement with the teacher's, and the encoder's throughput.

mIoU is the mean over every ground-truth mask of the validation loader of IoU(predicted logits > 0,
mask), at the input resolution inside the unpadded image. A box prompt takes SAM's single mask; a
point prompt (the mask's innermost pixel, :func:`~mdistiller_dense.sam.prompts.center_points`) takes
the one of SAM's three masks with the highest predicted IoU (SAM's rule for ambiguous prompts).
Each function sums over its loader, then passes the sums through ``reduce`` (the trainer gives
:func:`mdistiller.engine.distributed.sum_over_processes`: under torchrun every process then gets the
figures of the whole validation set).
"""

import contextlib
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor, nn

from mdistiller.losses.sam import mask_iou
from mdistiller_dense.sam.prompts import center_points, decode

__all__ = ["embedding_scores", "encoder_throughput", "prompt_miou"]

Embed = Callable[[Tensor, List[Dict]], Tensor]
Reduce = Callable[[List[float]], List[float]]


def _inside(x: Tensor, size: Tensor) -> Tensor:
    return x[..., :int(size[0]), :int(size[1])]


@torch.inference_mode()
def prompt_miou(sam: Sam, embed: Embed, loader, device: torch.device, autocast: Optional[Callable] = None,
                reduce: Reduce = list) -> "OrderedDict[str, float]":
    """Box and point mIoU (percent) of ``sam``'s decoder on ``embed(images, targets)``, and the mask count."""
    autocast = autocast or contextlib.nullcontext
    sums = [0.0, 0.0, 0.0]  # box IoU, point IoU, masks
    sam.eval()
    for images, targets in loader:
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        with autocast():
            embeddings = embed(images.to(device).float(), targets)
        for embedding, target in zip(embeddings, targets):
            masks, size = target["masks"], target["size"]
            if len(masks) == 0:
                continue
            with autocast():
                box_logits, _ = decode(sam, embedding[None], boxes=target["boxes"])
                point_logits, point_iou = decode(sam, embedding[None], points=center_points(masks))
            best = point_iou.float().argmax(1)
            point_logits = point_logits[torch.arange(len(masks), device=device), best]
            gt = _inside(masks, size)
            sums[0] += float(mask_iou(_inside(box_logits[:, 0], size), gt).sum())
            sums[1] += float(mask_iou(_inside(point_logits, size), gt).sum())
            sums[2] += len(masks)
    box, point, count = reduce(sums)
    count = max(count, 1.0)
    return OrderedDict(box_miou=100.0 * box / count, point_miou=100.0 * point / count, masks=count)


@torch.inference_mode()
def embedding_scores(embed: Embed, teacher: Callable[[List[Dict]], Tensor], loader, device: torch.device,
                     autocast: Optional[Callable] = None, reduce: Reduce = list) -> "OrderedDict[str, float]":
    """Mean cosine similarity (percent, over the embedding's positions) and MSE of the student's
    embeddings to the teacher's over ``loader``."""
    autocast = autocast or contextlib.nullcontext
    sums = [0.0, 0.0, 0.0]  # cosine, squared error, images
    for images, targets in loader:
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        with autocast():
            student = embed(images.to(device).float(), targets).float()
        reference = teacher(targets)
        sums[0] += float(F.cosine_similarity(student, reference, dim=1).mean((1, 2)).sum())
        sums[1] += float((student - reference).pow(2).mean((1, 2, 3)).sum())
        sums[2] += len(images)
    cosine, squared, count = reduce(sums)
    count = max(count, 1.0)
    return OrderedDict(cosine=100.0 * cosine / count, mse=squared / count)


@torch.inference_mode()
def encoder_throughput(encoder: nn.Module, image_size: int, device: torch.device, batch_size: int = 1,
                       steps: int = 5, warmup: int = 2, autocast: Optional[Callable] = None) -> float:
    """Images per second of ``encoder`` on (batch_size, 3, image_size, image_size) inputs (after
    `warmup` untimed batches; CUDA synchronised around the timed ones)."""
    autocast = autocast or contextlib.nullcontext
    encoder.eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with autocast():
        for _ in range(warmup):
            encoder(x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            encoder(x)
        sync()
    return steps * batch_size / (time.perf_counter() - start)
