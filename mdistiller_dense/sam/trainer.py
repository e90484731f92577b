"""The dense trainer (iteration runs, checkpoints, resume, DDP, loggers) on SA-1B-layout batches:
``(images, targets)`` with a list of per-image target dicts (masks differ in number). Validation asks
the trained module for its ``scores`` (:mod:`mdistiller_dense.sam.distillers`): box and point mIoU,
or in stage 1 the embedding agreement; the first is ``test_acc`` (``best`` follows it).
"""

from collections import OrderedDict
from typing import Dict

from mdistiller.engine.distributed import broadcast_buffers, sum_over_processes
from mdistiller.engine.trainer import trainer_dict
from mdistiller_dense.trainer import DenseTrainer

__all__ = ["SamTrainer"]


@trainer_dict.register("sam")
class SamTrainer(DenseTrainer):
    """SOLVER.TRAINER ``sam``: the dense trainer with the Segment Anything batches and scores."""

    def to_device(self, batch):
        images, targets = batch
        images = images.to(self.device, non_blocking=True).float()
        targets = [{k: v.to(self.device, non_blocking=True) if hasattr(v, "to") else v for k, v in t.items()}
                   for t in targets]
        return images, targets, {}

    def epoch_metrics(self, meters) -> "OrderedDict[str, float]":
        broadcast_buffers(self.distiller)
        scores = self.distiller.scores(self.val_loader, self.device, self.autocast, sum_over_processes)
        metrics = OrderedDict(train_loss=meters["loss"].avg, test_acc=next(iter(scores.values())))
        metrics.update((f"test_{name}", value) for name, value in scores.items())
        return metrics

    def epoch_line(self, epoch: int, lr: float, metrics: Dict[str, float]) -> str:
        tests = " ".join(f"{name[len('test_'):]} {value:.4g}" for name, value in metrics.items()
                         if name.startswith("test_") and name != "test_acc")
        return (f"Epoch {epoch}: lr {lr:.4g} | train loss {metrics['train_loss']:.4f} | test {tests} | "
                f"{metrics['img_per_s']:.1f} img/s")
