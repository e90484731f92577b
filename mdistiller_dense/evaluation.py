"""Dense evaluation: COCO box AP with pycocotools' COCOeval, and mean IoU over a confusion matrix."""

import contextlib
import io
from collections import OrderedDict
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["coco_results", "coco_map", "confusion_matrix", "detection_results", "evaluate_detector",
           "evaluate_segmenter", "mean_iou", "segmentation_confusion", "segmentation_scores"]

COCO_STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def coco_results(detections: Sequence[Dict[str, Tensor]], image_ids: Sequence[int],
                 cat_ids: Sequence[int]) -> List[Dict]:
    """Detections (xyxy boxes, scores, contiguous labels 1..K) as COCO result records (xywh, category ids)."""
    results = []
    for det, image_id in zip(detections, image_ids):
        boxes = det["boxes"].float().cpu().numpy()
        scores = det["scores"].float().cpu().numpy()
        labels = det["labels"].cpu().numpy()
        for box, score, label in zip(boxes, scores, labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": int(image_id), "category_id": int(cat_ids[int(label) - 1]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return results


def coco_map(coco_gt, results: List[Dict], image_ids: Optional[Sequence[int]] = None) -> "OrderedDict[str, float]":
    """COCO box AP@[.50:.95], AP50, AP75 and AP small / medium / large of ``results`` against
    ``coco_gt`` (a pycocotools COCO), restricted to ``image_ids``; every AP is 0 without detections."""
    if not results:
        return OrderedDict((name, 0.0) for name in COCO_STATS)
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return OrderedDict((name, float(v)) for name, v in zip(COCO_STATS, evaluator.stats[:6]))


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(K, K) counts, rows the true class, columns the predicted one; ``ignore_index`` pixels skipped."""
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> float:
    """Mean over classes present (in truth or prediction) of TP / (TP + FP + FN)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 0.0


@torch.inference_mode()
def detection_results(predict: Callable, loader, device: torch.device,
                      autocast: Optional[Callable[[], ContextManager]] = None) -> List[Dict]:
    """COCO result records of ``predict(list of images) -> list of detections`` over a CocoDetection loader."""
    autocast = autocast or contextlib.nullcontext
    results: List[Dict] = []
    for images, targets in loader:
        with autocast():
            detections = predict([image.to(device) for image in images])
        results += coco_results(detections, [int(t["image_id"]) for t in targets], loader.dataset.cat_ids)
    return results


def evaluate_detector(predict: Callable, loader, device: torch.device,
                      autocast: Optional[Callable[[], ContextManager]] = None) -> "OrderedDict[str, float]":
    """COCO AP of ``predict(list of images) -> list of detections`` over a CocoDetection loader."""
    return coco_map(loader.dataset.coco, detection_results(predict, loader, device, autocast), loader.dataset.ids)


@torch.inference_mode()
def segmentation_confusion(predict: Callable, loader, device: torch.device, num_classes: int,
                           ignore_index: int = 255,
                           autocast: Optional[Callable[[], ContextManager]] = None) -> Tensor:
    """The (K, K) confusion matrix of ``predict(images) -> (B, K, h, w) logits`` (resized to the labels)."""
    autocast = autocast or contextlib.nullcontext
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, masks in loader:
        with autocast():
            logits = predict(images.to(device))
        logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        confusion += confusion_matrix(logits.argmax(1).cpu(), masks, num_classes, ignore_index)
    return confusion


def segmentation_scores(confusion: Tensor) -> "OrderedDict[str, float]":
    """mIoU and pixel accuracy of a confusion matrix."""
    total = confusion.sum().clamp(min=1)
    return OrderedDict(miou=mean_iou(confusion), pixel_acc=float(confusion.diag().sum() / total))


def evaluate_segmenter(predict: Callable, loader, device: torch.device, num_classes: int, ignore_index: int = 255,
                       autocast: Optional[Callable[[], ContextManager]] = None) -> "OrderedDict[str, float]":
    """mIoU and pixel accuracy of ``predict(images) -> (B, K, h, w) logits`` (resized to the labels)."""
    return segmentation_scores(segmentation_confusion(predict, loader, device, num_classes, ignore_index, autocast))
