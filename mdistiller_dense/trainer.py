"""The classification trainer with the dense task's batches and metrics.

Checkpoints, resume, autocast, gradient clipping (SOLVER.GRAD_CLIP), loggers (worklog,
metrics.jsonl, tensorboardX, wandb), the progress bar and the error handling are the engine's
(:class:`mdistiller.engine.trainer.Trainer`).
``test_acc`` (and so ``best`` / ``best_acc``) is COCO AP x 100 for detectors, mIoU x 100 for segmenters.

SOLVER.ITERS > 0 makes a run iteration-based (mmsegmentation's 80k schedules): ITERS optimisation
steps drawn from one stream of passes over the training loader, the LR set every iteration
(:func:`mdistiller.engine.schedule.iteration_learning_rate`), and the engine's "epoch" is then one
validation interval of SOLVER.VAL_INTERVAL iterations (the last one shorter): validation, `latest`
/ `best` and the logs come at that cadence, `epoch_N` names the N-th interval, and a stop resumes
exactly mid-interval as mid-epoch.
"""

import math
from collections import OrderedDict
from typing import Callable, Dict, Iterator, Optional

import torch

from mdistiller.engine.distributed import ShardSampler, all_gather_objects, broadcast_buffers, sum_over_processes
from mdistiller.engine.schedule import iteration_learning_rate, learning_rate, linear_warmup_factor
from mdistiller.engine.trainer import Trainer, trainer_dict
from mdistiller.engine.utils import AverageMeter, rng_state, set_rng_state
from mdistiller.errors import ConfigError
from mdistiller_dense.evaluation import coco_map, detection_results, segmentation_confusion, segmentation_scores

__all__ = ["BatchStream", "DenseTrainer", "dense_evaluate"]


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


class BatchStream:
    """The training batches of an ITERS run: passes 0, 1, ... over the loader, one after the other.

    Pass p is opened when its first batch is asked for, by ``open_pass(p)`` (the RNG seeded and the
    sampler's epoch set as for epoch p + 1 of an epoch run, then ``iter(loader)``). A stream made at
    ``position`` g mid-pass (a resumed run) opens pass ``g // len(loader)`` and draws its first
    ``g % len(loader)`` batches, then puts the RNG back as it found it: the batches and the RNG from
    there on are those of a run that went through the first g iterations without a stop.
    """

    def __init__(self, loader, open_pass: Callable[[int], Iterator], position: int, device: torch.device) -> None:
        self.loader, self.open_pass, self.position = loader, open_pass, position
        self.batches: Optional[Iterator] = None
        offset = position % len(loader)
        if offset:
            saved = rng_state(device)
            self.batches = open_pass(position // len(loader))
            for _ in range(offset):
                next(self.batches)
            set_rng_state(saved, device)

    def take(self, count: int) -> Iterator:
        """The next `count` batches."""
        for _ in range(count):
            if self.position % len(self.loader) == 0:
                self.batches = self.open_pass(self.position // len(self.loader))
            batch = next(self.batches)
            self.position += 1
            yield batch


@trainer_dict.register("dense")
class DenseTrainer(Trainer):
    """Batches are (images, targets): lists for detectors, tensors for segmenters. Epochs, or with
    SOLVER.ITERS intervals of SOLVER.VAL_INTERVAL iterations (module docstring)."""

    stream: Optional[BatchStream] = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.iterations > 0 and self.cfg.SOLVER.VAL_INTERVAL < 1:
            raise ConfigError(f"SOLVER.VAL_INTERVAL must be at least 1 with SOLVER.ITERS {self.iterations}, got "
                              f"{self.cfg.SOLVER.VAL_INTERVAL}.")

    # -- iteration-based runs (SOLVER.ITERS) -----------------------------------------------------
    @property
    def iterations(self) -> int:
        return self.cfg.SOLVER.ITERS

    @property
    def interval(self) -> int:
        return min(self.cfg.SOLVER.VAL_INTERVAL, self.iterations)

    @property
    def num_epochs(self) -> int:
        if self.iterations <= 0:
            return super().num_epochs
        return math.ceil(self.iterations / self.interval)

    def steps_in_epoch(self, epoch: int) -> int:
        if self.iterations <= 0:
            return super().steps_in_epoch(epoch)
        return min(self.interval, self.iterations - (epoch - 1) * self.interval)

    def iteration(self, epoch: int, step: int) -> int:
        """The run's iteration (from 0) at `step` of `epoch`."""
        per_epoch = self.interval if self.iterations > 0 else len(self.train_loader)
        return (epoch - 1) * per_epoch + step

    def open_pass(self, index: int) -> Iterator:
        """Pass `index` (from 0) over the training loader, seeded as epoch ``index + 1``."""
        return super().epoch_batches(index + 1)

    def epoch_batches(self, epoch: int) -> Iterator:
        if self.iterations <= 0:
            return super().epoch_batches(epoch)
        start = self.iteration(epoch, 0)
        if self.stream is None or self.stream.position != start:
            self.stream = BatchStream(self.train_loader, self.open_pass, start, self.device)
        return self.stream.take(self.steps_in_epoch(epoch))

    def epoch_learning_rate(self, epoch: int) -> float:
        if self.iterations <= 0:
            return super().epoch_learning_rate(epoch)
        return iteration_learning_rate(self.iteration(epoch, 0), self.cfg.SOLVER) * self.lr_scale

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
        """Set the iteration's LR, then step: an ITERS run's schedule per iteration; in both kinds of
        run the linear warm-up over the first SOLVER.WARMUP_ITERS iterations (counted over epochs,
        from 0; mmdetection's ``warmup_iters`` / ``warmup_ratio``) scales it."""
        solver = self.cfg.SOLVER
        iteration = self.iteration(epoch, step)
        warming = 0 < solver.WARMUP_ITERS and iteration <= solver.WARMUP_ITERS
        if self.iterations > 0 or warming:
            lr = iteration_learning_rate(iteration, solver) if self.iterations > 0 else learning_rate(epoch, solver)
            factor = linear_warmup_factor(iteration, solver.WARMUP_ITERS, solver.WARMUP_RATIO) if warming else 1.0
            for group in self.optimizer.param_groups:
                group["lr"] = lr * self.lr_scale * factor
        return super().train_iter(image, target, extra, epoch, step)
