"""Prompts from ground-truth masks and one round of SAM's prompt encoder + mask decoder.

Training (Kirillov et al., "Segment Anything", appendix A, first round of the interactive
simulation): per mask, with probability ``point_prob`` one foreground point drawn uniformly from the
mask, otherwise its box with noise of standard deviation ``box_noise`` times the box side, at most 20
px per coordinate. Evaluation: the box itself, and the one foreground point farthest from the mask's
boundary (the centre of its largest inscribed disc; scipy's Euclidean distance transform).
A point prompt asks for SAM's three candidate masks (ambiguity), a box for its single mask; the
masks are predicted at 1/4 of the input (SAM's low-resolution logits) and upsampled to the input.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor

from mdistiller.losses.sam import sam_mask_loss

__all__ = ["center_points", "decode", "noisy_boxes", "preprocess", "prompt_losses", "random_points"]

MAX_BOX_NOISE = 20.0  # px, SAM's cap


def preprocess(sam: Sam, images: Tensor, sizes: Tensor) -> Tensor:
    """(B, 3, S, S) 0..255 images padded at the bottom / right -> SAM's input: normalised by
    ``pixel_mean`` / ``pixel_std`` with the padding 0 (SAM pads after normalising); ``sizes`` (B, 2)."""
    x = (images.float() - sam.pixel_mean) / sam.pixel_std
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    return x * valid[:, None].to(x.dtype)


def random_points(masks: Tensor) -> Tensor:
    """(n, 2) xy: one pixel of each mask (n, H, W), uniformly at random (torch's RNG)."""
    flat = masks.flatten(1).float()
    index = torch.multinomial(flat + (flat.sum(1, keepdim=True) == 0).float(), 1)[:, 0]
    width = masks.shape[-1]
    return torch.stack([index % width, index // width], 1).float()


def center_points(masks: Tensor) -> Tensor:
    """(n, 2) xy: per mask the pixel farthest from the background (first such pixel in raster order)."""
    from scipy.ndimage import distance_transform_edt

    points = []
    for mask in masks.cpu().numpy().astype(bool):
        distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(distance.argmax()), distance.shape)
        points.append((float(x), float(y)))
    return torch.tensor(points, dtype=torch.float32, device=masks.device).reshape(-1, 2)


def noisy_boxes(boxes: Tensor, box_noise: float) -> Tensor:
    """xyxy boxes with each coordinate moved by N(0, (box_noise * side)^2), clipped to +-20 px."""
    if box_noise <= 0:
        return boxes
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = torch.randn(boxes.shape, device=boxes.device) * box_noise * sides
    return boxes + noise.clamp(-MAX_BOX_NOISE, MAX_BOX_NOISE)


def decode(sam: Sam, embedding: Tensor, points: Optional[Tensor] = None, boxes: Optional[Tensor] = None
           ) -> Tuple[Tensor, Tensor]:
    """SAM's logits at the input resolution (n, M, S, S) and IoU predictions (n, M) for one image's
    ``embedding`` (1, 256, h, w) and n prompts: foreground points (n, 2) xy (M = 3) or boxes
    (n, 4) xyxy (M = 1), in input pixels."""
    point_input = None
    if points is not None:
        point_input = (points[:, None, :], torch.ones(len(points), 1, dtype=torch.int, device=points.device))
    sparse, dense = sam.prompt_encoder(points=point_input, boxes=boxes, masks=None)
    low_res, iou_pred = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=points is not None)
    size = sam.prompt_encoder.input_image_size
    return F.interpolate(low_res.float(), size, mode="bilinear", align_corners=False), iou_pred


def prompt_losses(sam: Sam, embeddings: Tensor, targets, point_prob: float, box_noise: float,
                  weights: Tuple[float, float, float]) -> Dict[str, Tensor]:
    """SAM's loss (mdistiller/losses/sam.py) of one round of prompts sampled from every target's
    masks, averaged over the prompts of the batch; ``weights`` (focal, dice, IoU)."""
    totals: Dict[str, Tensor] = {}
    count = 0
    for embedding, target in zip(embeddings, targets):
        masks = target["masks"]
        if len(masks) == 0:
            continue
        is_point = torch.rand(len(masks), device=masks.device) < point_prob
        for chosen, kind in ((is_point, "point"), (~is_point, "box")):
            if not chosen.any():
                continue
            if kind == "point":
                logits, iou_pred = decode(sam, embedding[None], points=random_points(masks[chosen]))
            else:
                logits, iou_pred = decode(sam, embedding[None], boxes=noisy_boxes(target["boxes"][chosen], box_noise))
            n = int(chosen.sum())
            for name, value in sam_mask_loss(logits, masks[chosen], iou_pred, *weights).items():
                totals[name] = totals.get(name, 0.0) + value * n
            count += n
    if count == 0:  # no mask in the batch: zero terms that keep the graph
        zero = embeddings.sum() * 0.0
        return {"loss_focal": zero, "loss_dice": zero, "loss_iou": zero}
    return {name: value / count for name, value in totals.items()}
