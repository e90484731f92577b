"""The classification trainer with the dense task's batches and metrics.

Checkpoints, resume, autocast, gradient clipping (SOLVER.GRAD_CLIP), loggers (worklog,
metrics.jsonl, tensorboardX, wandb), the progress bar and the error handling are the engine's
(:class:`mdistiller.engine.trainer.Trainer`).
``test_acc`` (and so ``best`` / ``best_acc``) is COCO AP x 100 for detectors, mIoU x 100 for segmenters.
"""

from collections import OrderedDict
from typing import Dict

import torch

from mdistiller.engine.distributed import ShardSampler, all_gather_objects, broadcast_buffers, sum_over_processes
from mdistiller.engine.schedule import learning_rate, linear_warmup_factor
from mdistiller.engine.trainer import Trainer, trainer_dict
from mdistiller.engine.utils import AverageMeter
from mdistiller_dense.evaluation import coco_map, detection_results, segmentation_confusion, segmentation_scores

__all__ = ["DenseTrainer", "dense_evaluate"]


def dense_evaluate(distiller, loader, device: torch.device, autocast=None) -> "OrderedDict[str, float]":
    """COCO APs or mIoU of the distiller's student (through ``forward_test``) over ``loader``.

    When ``loader`` is one process's shard of the validation set (a :class:`ShardSampler`, under
    torchrun), the detections of every process are gathered, or their confusion matrices summed,
    before scoring: every process gets the scores of the whole set.
    """
    distiller.eval()
    predict = lambda images: distiller(image=images)  # noqa: E731
    sharded = isinstance(getattr(loader, "sampler", None), ShardSampler)
    if distiller.detection:
        results = detection_results(predict, loader, device, autocast)
        if sharded:
            results = [record for part in all_gather_objects(results) for record in part]
        return coco_map(loader.dataset.coco, results, loader.dataset.ids)
    confusion = segmentation_confusion(predict, loader, device, distiller.num_classes, distiller.ignore_index, autocast)
    if sharded:
        confusion = torch.tensor(sum_over_processes(confusion.flatten().tolist()), dtype=torch.int64).view_as(confusion)
    return segmentation_scores(confusion)


@trainer_dict.register("dense")
class DenseTrainer(Trainer):
    """Batches are (images, targets): lists for detectors, tensors for segmenters."""

    def new_meters(self) -> Dict[str, AverageMeter]:
        return {"loss": AverageMeter()}

    def batch_size(self, image) -> int:
        return len(image)

    def step_statistics(self, preds, target) -> torch.Tensor:
        """No per-batch task metric (AP and mIoU are measured on the validation set)."""
        return torch.zeros(0, device=self.device)

    def update_meters(self, meters, statistics, n: int) -> None:
        pass

    def to_device(self, batch):
        images, targets = batch[0], batch[1]
        if isinstance(images, (list, tuple)):
            images = [image.to(self.device, non_blocking=True) for image in images]
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        else:
            images = images.to(self.device, non_blocking=True).float()
            targets = targets.to(self.device, non_blocking=True)
        return images, targets, {}

    def epoch_metrics(self, meters) -> "OrderedDict[str, float]":
        broadcast_buffers(self.distiller)  # every process scores rank 0's model, as in classification
        results = dense_evaluate(self.distiller, self.val_loader, self.device, self.autocast)
        main = results["ap"] if "ap" in results else results["miou"]
        metrics = OrderedDict(train_loss=meters["loss"].avg, test_acc=100.0 * main)
        metrics.update((f"test_{name}", 100.0 * value) for name, value in results.items())
        return metrics

    def epoch_line(self, epoch: int, lr: float, metrics: Dict[str, float]) -> str:
        name = "AP" if "test_ap" in metrics else "mIoU"
        extra = f" AP50 {metrics['test_ap50']:.2f}" if "test_ap50" in metrics else ""
        return (f"Epoch {epoch}: lr {lr:.4g} | train loss {metrics['train_loss']:.4f} | test {name} "
                f"{metrics['test_acc']:.2f}{extra} | {metrics['img_per_s']:.1f} img/s")

    def train_iter(self, image, target, extra, epoch: int, step: int):
        """Scale the epoch's LR by the linear warm-up over the first SOLVER.WARMUP_ITERS iterations
        (counted over epochs, from 0; mmdetection's ``warmup_iters`` / ``warmup_ratio``), then step."""
        warmup_iters = self.cfg.SOLVER.WARMUP_ITERS
        iteration = (epoch - 1) * len(self.train_loader) + step
        if 0 < warmup_iters and iteration <= warmup_iters:
            factor = linear_warmup_factor(iteration, warmup_iters, self.cfg.SOLVER.WARMUP_RATIO)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(epoch, self.cfg.SOLVER) * self.lr_scale * factor
        return super().train_iter(image, target, extra, epoch, step)
