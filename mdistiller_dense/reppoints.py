"""RepPoints: Yang et al., "RepPoints: Point Set Representation for Object Detection", ICCV 2019,
as mmdetection's ``reppoints_moment_r50_fpn_gn-neck+head_2x_coco`` runs it.

- Neck: an FPN on C3-C5 with GroupNorm (32 groups) after every conv and no conv bias, P6 from C5
  and P7 from P6 by stride-2 convs (mmdetection's ``add_extra_convs='on_input'``, no ReLU between):
  :class:`LastLevelP6P7GN` as torchvision's FPN extra block.
- Head (:class:`RepPointsHead`, mmdetection's ``RepPointsHead``): on every level two towers of
  three conv3x3-GN-ReLU (``cls_convs``, ``reg_convs``); the initial points
  ``P_init = pts_init_out(relu(pts_init_conv(reg)))`` (nine (dy, dx) offsets per location, in units
  of the level's stride, paper eq. (2)); the 3x3 deformable convs ``reppoints_cls_conv`` /
  ``reppoints_pts_refine_conv`` (torchvision.ops.deform_conv2d, no bias) sample the towers at
  ``P_init - base grid``, where ``P_init`` passes the gradient times ``gradient_mul`` (0.1); the
  refined points ``P_refine = pts_refine_out(...) + P_init.detach()`` (eq. (3)).
- Pseudo box (:func:`moment_box`, Sec. 3.2 "moment-based"): centre = the points' mean, half size =
  their (unbiased) standard deviation times ``exp(lambda)``, ``lambda`` the learned moment
  multiplier (``moment_transfer``, its gradient scaled by ``moment_mul`` 0.01).
- Targets: the initial stage by :func:`point_assign` (the location nearest the box centre on the
  box's level ``floor((log2(w / 4) + log2(h / 4)) / 2)``, one per box); the refined stage by
  :func:`max_iou_assign` of the initial pseudo boxes (IoU >= 0.5 positive, < 0.4 negative, each
  box's best match positive).
- Losses: sigmoid focal loss (alpha 0.25, gamma 2) on the refined stage's labels over the
  positives and negatives, divided by the positives; SmoothL1 (beta 0.11) between the pseudo
  boxes and their boxes, both divided by ``4 * stride``: weight 0.5 (init), 1.0 (refine).
- Test: sigmoid scores over 0.05, the 1000 best per level, refined pseudo boxes, class-wise NMS at
  IoU 0.5, 100 per image (mmdetection's ``test_cfg``).

Parameter names are mmdetection's under ``head.`` (``head.cls_convs.0.conv.weight``,
``head.cls_convs.0.gn.weight``, ``head.reppoints_cls_conv.weight``, ``head.moment_transfer``, ...),
so mdistiller_dense.convert maps ``bbox_head.X`` to ``head.X``. Classes: ``num_classes`` counts the
background (label 0, as torchvision's detectors): its classifier row is always a negative and is
never detected; mmdetection's K-class classifier is rows 1..K.
"""

import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, deform_conv2d, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["STRIDES", "BACKGROUND", "IGNORED", "group_norm", "LastLevelP6P7GN", "RepPointsHead", "RepPoints",
           "moment_box", "point_assign", "max_iou_assign", "locations"]

STRIDES = (8, 16, 32, 64, 128)  # P3..P7
BACKGROUND, IGNORED = -1, -2    # assignments that are no box index


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (mmdetection's ``norm_cfg=dict(type='GN', num_groups=32)``)."""
    return nn.GroupNorm(32, channels)


class LastLevelP6P7GN(ExtraFPNBlock):
    """P6 = GN(conv3x3 stride 2 (C5)), P7 = GN(conv3x3 stride 2 (P6)), no ReLU between them (unlike
    torchvision's LastLevelP6P7): mmdetection's FPN extra convs ``on_input`` with GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = Conv2dNormActivation(in_channels, out_channels, 3, 2, norm_layer=group_norm, activation_layer=None)
        self.p7 = Conv2dNormActivation(out_channels, out_channels, 3, 2, norm_layer=group_norm, activation_layer=None)

    def forward(self, results: List[Tensor], x: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        p6 = self.p6(x[-1])
        return results + [p6, self.p7(p6)], names + ["p6", "p7"]


def moment_box(points: Tensor, transfer: Tensor, moment_mul: float = 0.01) -> Tensor:
    """The moment pseudo box (x1, y1, x2, y2) of point sets ``(..., n, 2)`` given as (x, y).

    RepPoints Sec. 3.2: centre ``mu`` = the mean of the points, half width / height = the standard
    deviation of x / y (unbiased, as torch.std) times ``exp(transfer[0])`` / ``exp(transfer[1])``;
    the gradient reaching ``transfer`` is scaled by ``moment_mul`` (its value is unchanged).
    """
    transfer = transfer * moment_mul + transfer.detach() * (1 - moment_mul)
    centre = points.mean(-2)
    half = points.std(-2) * torch.exp(transfer)
    return torch.cat([centre - half, centre + half], -1)


def locations(sizes: Sequence[Tuple[int, int]], strides: Sequence[int], device: torch.device) -> Tuple[Tensor, Tensor]:
    """The locations of every level, row-major: ``(L, 2)`` (x, y) = (column, row) * stride (no half
    stride offset, as mmdetection's point generator for RepPoints) and ``(L,)`` their strides."""
    points, point_strides = [], []
    for (h, w), stride in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append(torch.stack([xs, ys], -1).reshape(-1, 2).float() * stride)
        point_strides.append(torch.full((h * w,), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def point_assign(points: Tensor, strides: Tensor, boxes: Tensor, scale: int = 4, pos_num: int = 1) -> Tensor:
    """mmdetection's PointAssigner: the box index of each location (``BACKGROUND`` for none).

    Box ``g`` (w, h) lives on level ``l_g = clamp(int((log2(w / scale) + log2(h / scale)) / 2))``
    (``int`` truncates, the clamp is to the levels present); of that level's locations the
    ``pos_num`` nearest its centre by ``|(p - c) / (w, h)|`` become its positives, unless a box
    handled earlier is nearer to them.
    """
    assigned = torch.full((points.shape[0],), BACKGROUND, dtype=torch.long, device=points.device)
    if boxes.numel() == 0 or points.numel() == 0:
        return assigned
    point_levels = torch.log2(strides).int()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    box_levels = ((torch.log2(sizes[:, 0] / scale) + torch.log2(sizes[:, 1] / scale)) / 2).int()
    box_levels = box_levels.clamp(int(point_levels.min()), int(point_levels.max()))
    best = torch.full((points.shape[0],), float("inf"), device=points.device)
    for g in range(boxes.shape[0]):
        index = torch.nonzero(point_levels == box_levels[g]).squeeze(1)
        distance = ((points[index] - centres[g]) / sizes[g]).norm(dim=1)
        nearest, order = distance.topk(min(pos_num, index.numel()), largest=False)
        index = index[order]
        closer = nearest < best[index]
        assigned[index[closer]] = g
        best[index[closer]] = nearest[closer]
    return assigned


def max_iou_assign(candidates: Tensor, boxes: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4,
                   min_pos_iou: float = 0.0) -> Tensor:
    """mmdetection's MaxIoUAssigner: the box index of each candidate box, ``BACKGROUND`` or ``IGNORED``.

    IoU below ``neg_iou`` with every box: background; at least ``pos_iou``: the box of highest IoU;
    between: ignored. Then each box takes every candidate whose IoU with it equals its highest IoU
    (when that is at least ``min_pos_iou``), later boxes overriding earlier ones.
    """
    assigned = torch.full((candidates.shape[0],), BACKGROUND, dtype=torch.long, device=candidates.device)
    if boxes.numel() == 0 or candidates.numel() == 0:
        return assigned
    iou = box_iou(boxes, candidates)
    best, best_box = iou.max(0)
    assigned[best >= neg_iou] = IGNORED
    assigned[best >= pos_iou] = best_box[best >= pos_iou]
    box_best = iou.max(1).values
    for g in range(boxes.shape[0]):
        if box_best[g] >= min_pos_iou:
            assigned[iou[g] == box_best[g]] = g
    return assigned


def _conv_gn(in_channels: int, out_channels: int) -> nn.Sequential:
    """mmcv's ConvModule(3x3, GN): ``conv`` (no bias), ``gn``, ReLU."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                                     gn=group_norm(out_channels), relu=nn.ReLU(inplace=True)))


def _deform(conv: nn.Conv2d, x: Tensor, offset: Tensor) -> Tensor:
    """``conv``'s weight as a deformable conv sampling ``x`` at ``offset``, in float32 and returned in
    ``x``'s dtype (what torchvision's CUDA autocast does for deform_conv2d; its CPU kernel has no bfloat16).
    A NaN offset samples at the location itself: torchvision's kernels read out of bounds on NaN
    (a crash); the NaN points still reach the losses, where the trainer's non-finite check sees them."""
    offset = torch.nan_to_num(offset.float(), nan=0.0)
    return deform_conv2d(x.float(), offset, conv.weight.float(), padding=conv.padding).to(x.dtype)


class RepPointsHead(nn.Module):
    """The RepPoints head on every FPN level, its targets, losses and detections (module docstring).

    ``forward(features)`` returns, flattened over the levels' locations (row-major per level, levels
    in order, as torchvision's dense heads): ``cls_logits`` (N, L, num_classes), ``pts_init`` and
    ``bbox_regression`` (the refined points; the box output the dense distillers compare), both
    (N, L, 2 * num_points) offsets ``(dy_1, dx_1, ..., dy_n, dx_n)`` in units of the level's stride.
    """

    def __init__(self, in_channels: int, num_classes: int, feat_channels: int = 256, point_feat_channels: int = 256,
                 stacked_convs: int = 3, num_points: int = 9, gradient_mul: float = 0.1, moment_mul: float = 0.01,
                 strides: Sequence[int] = STRIDES, point_base_scale: int = 4, pos_num: int = 1,
                 pos_iou: float = 0.5, neg_iou: float = 0.4, loss_init_weight: float = 0.5,
                 loss_refine_weight: float = 1.0, smooth_l1_beta: float = 0.11) -> None:
        super().__init__()
        kernel = int(round(num_points ** 0.5))
        if kernel * kernel != num_points or kernel % 2 == 0:
            raise ValueError(f"num_points {num_points}: RepPoints needs an odd square (9, 25, ...).")
        self.num_classes, self.num_points, self.strides = num_classes, num_points, tuple(strides)
        self.gradient_mul, self.moment_mul = gradient_mul, moment_mul
        self.point_base_scale, self.pos_num, self.pos_iou, self.neg_iou = point_base_scale, pos_num, pos_iou, neg_iou
        self.loss_weights, self.beta = (loss_init_weight, loss_refine_weight), smooth_l1_beta
        self.cls_convs = nn.Sequential(*[_conv_gn(in_channels if i == 0 else feat_channels, feat_channels)
                                         for i in range(stacked_convs)])
        self.reg_convs = nn.Sequential(*[_conv_gn(in_channels if i == 0 else feat_channels, feat_channels)
                                         for i in range(stacked_convs)])
        pad = (kernel - 1) // 2
        # weights of the deformable convs (mmcv's DeformConv: no bias), applied by deform_conv2d
        self.reppoints_cls_conv = nn.Conv2d(feat_channels, point_feat_channels, kernel, padding=pad, bias=False)
        self.reppoints_cls_out = nn.Conv2d(point_feat_channels, num_classes, 1)
        self.reppoints_pts_init_conv = nn.Conv2d(feat_channels, point_feat_channels, 3, padding=1)
        self.reppoints_pts_init_out = nn.Conv2d(point_feat_channels, 2 * num_points, 1)
        self.reppoints_pts_refine_conv = nn.Conv2d(feat_channels, point_feat_channels, kernel, padding=pad, bias=False)
        self.reppoints_pts_refine_out = nn.Conv2d(point_feat_channels, 2 * num_points, 1)
        self.moment_transfer = nn.Parameter(torch.zeros(2))
        grid = torch.arange(-pad, pad + 1, dtype=torch.float32)
        base = torch.stack([grid.repeat_interleave(kernel), grid.repeat(kernel)], 1)  # (dy, dx), row-major
        self.register_buffer("dcn_base", base.reshape(1, -1, 1, 1), persistent=False)
        for module in self.modules():  # mmdetection's init_weights: normal(0, 0.01), zero bias
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.reppoints_cls_out.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01

    def forward_level(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Classification logits, initial and refined points (N, C, H, W) of one level (paper eqs. (2), (3))."""
        cls_feat, pts_feat = self.cls_convs(x), self.reg_convs(x)
        pts_init = self.reppoints_pts_init_out(F.relu(self.reppoints_pts_init_conv(pts_feat)))
        scaled = (1 - self.gradient_mul) * pts_init.detach() + self.gradient_mul * pts_init
        offset = scaled - self.dcn_base
        cls_out = self.reppoints_cls_out(F.relu(_deform(self.reppoints_cls_conv, cls_feat, offset)))
        refine = self.reppoints_pts_refine_out(F.relu(_deform(self.reppoints_pts_refine_conv, pts_feat, offset)))
        return cls_out, pts_init, refine + pts_init.detach()

    def forward(self, features: List[Tensor]) -> Dict[str, Tensor]:
        outputs = [self.forward_level(x) for x in features]

        def flat(index: int) -> Tensor:
            return torch.cat([out[index].flatten(2).transpose(1, 2) for out in outputs], 1)

        return {"cls_logits": flat(0), "pts_init": flat(1), "bbox_regression": flat(2)}

    def point_sets(self, offsets: Tensor, centres: Tensor, strides: Tensor) -> Tensor:
        """Offsets (..., L, 2n) (dy, dx in strides) -> image points (..., L, n, 2) (x, y)."""
        yx = offsets.reshape(*offsets.shape[:-1], self.num_points, 2)
        return yx.flip(-1) * strides[:, None, None] + centres[:, None, :]

    def pseudo_boxes(self, offsets: Tensor, centres: Tensor, strides: Tensor) -> Tensor:
        """The moment boxes (..., L, 4) in image coordinates of point offsets (..., L, 2n)."""
        return moment_box(self.point_sets(offsets, centres, strides), self.moment_transfer, self.moment_mul)

    def _box_loss(self, pred: Tensor, target: Tensor, strides: Tensor) -> Tensor:
        """Sum of SmoothL1(beta) between boxes divided by ``point_base_scale * stride``."""
        norm = (self.point_base_scale * strides)[:, None]
        return F.smooth_l1_loss(pred / norm, target / norm, beta=self.beta, reduction="sum")

    def compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor],
                     sizes: Sequence[Tuple[int, int]], image_sizes: Sequence[Tuple[int, int]]) -> Dict[str, Tensor]:
        """``loss_cls`` (focal, over the refined stage's positives and negatives, / positives),
        ``loss_pts_init`` and ``loss_pts_refine`` (SmoothL1 of the pseudo boxes, / the stage's
        positives), each positive count summed over the images with at least 1 per image, as
        mmdetection's RepPointsHead.loss."""
        logits = head_outputs["cls_logits"].float()
        pts_init, pts_refine = head_outputs["pts_init"].float(), head_outputs["bbox_regression"].float()
        centres, strides = locations(sizes, self.strides[:len(sizes)], logits.device)
        boxes_init = self.pseudo_boxes(pts_init, centres, strides)
        boxes_refine = self.pseudo_boxes(pts_refine, centres, strides)
        candidates = boxes_init.detach()
        cls_loss = init_loss = refine_loss = logits.new_zeros(())
        init_count = refine_count = 0
        for i, target in enumerate(targets):
            gt, labels = target["boxes"].float(), target["labels"]
            valid = self._valid(image_sizes[i], sizes, strides.device)
            index = torch.nonzero(valid).squeeze(1)
            assigned = point_assign(centres[index], strides[index], gt, self.point_base_scale, self.pos_num)
            positive = index[assigned >= 0]
            init_loss = init_loss + self._box_loss(boxes_init[i, positive], gt[assigned[assigned >= 0]],
                                                   strides[positive])
            init_count += max(positive.numel(), 1)
            assigned = max_iou_assign(candidates[i, index], gt, self.pos_iou, self.neg_iou)
            positive, kept = index[assigned >= 0], index[assigned != IGNORED]
            one_hot = torch.zeros_like(logits[i, kept])
            chosen = assigned[assigned != IGNORED]
            rows = torch.nonzero(chosen >= 0).squeeze(1)
            one_hot[rows, labels[chosen[rows]]] = 1.0
            cls_loss = cls_loss + sigmoid_focal_loss(logits[i, kept], one_hot, reduction="sum")
            refine_loss = refine_loss + self._box_loss(boxes_refine[i, positive], gt[assigned[assigned >= 0]],
                                                       strides[positive])
            refine_count += max(positive.numel(), 1)
        weight_init, weight_refine = self.loss_weights
        return {"loss_cls": cls_loss / refine_count, "loss_pts_init": weight_init * init_loss / init_count,
                "loss_pts_refine": weight_refine * refine_loss / refine_count}

    def _valid(self, image_size: Tuple[int, int], sizes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
        """Locations inside the image padded to a multiple of 32 (mmdetection's valid flags)."""
        padded = [-(-side // 32) * 32 for side in image_size]
        flags = []
        for (h, w), stride in zip(sizes, self.strides):
            rows = torch.arange(h, device=device) < min(-(-padded[0] // stride), h)
            cols = torch.arange(w, device=device) < min(-(-padded[1] // stride), w)
            flags.append((rows[:, None] & cols[None, :]).flatten())
        return torch.cat(flags)

    def postprocess(self, head_outputs: Dict[str, Tensor], sizes: Sequence[Tuple[int, int]],
                    image_sizes: Sequence[Tuple[int, int]], score_thresh: float, nms_thresh: float,
                    detections_per_img: int, topk_candidates: int) -> List[Dict[str, Tensor]]:
        """Per image: per level the ``topk_candidates`` best (location, class) scores over
        ``score_thresh`` (the background row excluded), their refined pseudo boxes clipped to the
        image, class-wise NMS, the ``detections_per_img`` best (mmdetection's test_cfg)."""
        centres, strides = locations(sizes, self.strides[:len(sizes)], head_outputs["cls_logits"].device)
        boxes = self.pseudo_boxes(head_outputs["bbox_regression"].float(), centres, strides)
        scores = torch.sigmoid(head_outputs["cls_logits"].float())[..., 1:]
        splits = [h * w for h, w in sizes]
        detections = []
        for i, image_size in enumerate(image_sizes):
            kept_boxes, kept_scores, kept_labels = [], [], []
            for level_scores, level_boxes in zip(scores[i].split(splits), boxes[i].split(splits)):
                flat = level_scores.flatten()
                candidates = torch.nonzero(flat > score_thresh).squeeze(1)
                top, order = flat[candidates].topk(min(topk_candidates, candidates.numel()))
                candidates = candidates[order]
                classes = level_scores.shape[1]
                kept_boxes.append(clip_boxes_to_image(level_boxes[candidates // classes], image_size))
                kept_scores.append(top)
                kept_labels.append(candidates % classes + 1)
            image_boxes, image_scores, image_labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
            keep = batched_nms(image_boxes, image_scores, image_labels, nms_thresh)[:detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
        return detections


class RepPoints(nn.Module):
    """A RepPoints detector with torchvision's detector interface (as its RetinaNet / FCOS).

    ``backbone`` gives an OrderedDict of P3..P7 (``out_channels`` each). Training:
    ``model(images, targets)`` -> ``{"loss_cls", "loss_pts_init", "loss_pts_refine"}``; eval:
    ``model(images)`` -> a list of ``{"boxes", "scores", "labels"}`` in the original image sizes.
    ``transform`` resizes, normalises and batches the images (GeneralizedRCNNTransform).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, min_size: int = 800, max_size: int = 1333,
                 image_mean: Optional[List[float]] = None, image_std: Optional[List[float]] = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 topk_candidates: int = 1000, **head_kwargs) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = RepPointsHead(backbone.out_channels, num_classes, **head_kwargs)
        self.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                                  image_std or [0.229, 0.224, 0.225])
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("RepPoints in training mode needs targets (boxes, labels per image).")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, targets = self.transform(images, targets)
        features = list(self.backbone(image_list.tensors).values())
        head_outputs = self.head(features)
        sizes = [tuple(f.shape[-2:]) for f in features]
        if self.training:
            return self.head.compute_loss(targets, head_outputs, sizes, image_list.image_sizes)
        detections = self.head.postprocess(head_outputs, sizes, image_list.image_sizes, self.score_thresh,
                                           self.nms_thresh, self.detections_per_img, self.topk_candidates)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
