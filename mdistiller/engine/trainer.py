"""The training loop shared by every distiller: step, validate, checkpoint, log, resume."""

import os
import time
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
from tqdm import tqdm
from yacs.config import CfgNode as CN

from mdistiller.engine.cfg import dump_cfg
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from mdistiller.engine.distributed import (NullLog, broadcast_buffers, is_main_process, local_device,
                                           max_over_processes, mean_over_processes, rank, reduce_meters,
                                           set_sampler_epoch, sum_over_processes, world_size, wrap_ddp)
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.fast_path import channels_last_enabled, place_loader, prepare_distiller
from mdistiller.engine.loggers import MetricsFile, TensorBoardLog, WandbLog, WorkLog
from mdistiller.engine.optim import build_optimizer
from mdistiller.engine.schedule import learning_rate
from mdistiller.engine.utils import (AverageMeter, accuracy, autocast_context, autocast_dtype, resolve_device, rng_state,
                                     seed_everything, set_rng_state)
from mdistiller.errors import CheckpointError, NonFiniteLossError, OutputDirError
from mdistiller.registry import Registry

trainer_dict = Registry("trainer")

Losses = Dict[str, torch.Tensor]


def ensure_writable_dir(path: str) -> None:
    """Create `path` if needed and check a file can be written in it; OutputDirError otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as err:
        raise OutputDirError(
            f"Cannot write to output directory {path} ({err.strerror}); set LOG.PREFIX to a writable directory."
        ) from None


@trainer_dict.register("base")
class Trainer:
    """Trains `distiller` on `train_loader`, validating on `val_loader` after every epoch.

    Owns the device, autocast and the optimizer. Checkpoints keep MDistiller's names (`latest`,
    `best`, `student_latest`, `student_best`, `epoch_N`, `student_N`) under `LOG.PREFIX/<name>`.
    Batches are `(image, target, index[, contrastive_index])`; all but image and target reach the
    distiller as keyword arguments.

    Speed (mdistiller/engine/fast_path.py): autocast (SOLVER.AMP), channels_last, the teacher's fast
    inference copy, torch.compile. Under torchrun (mdistiller/engine/distributed.py) `train_model`
    is the DDP wrapper of `distiller`, metrics are reduced over processes and rank 0 alone logs and
    saves; `distiller` stays the bare module, so checkpoints are the same as on one process.
    """

    def __init__(self, experiment_name: str, distiller, train_loader, val_loader, cfg: CN,
                 run_dir: Optional[str] = None) -> None:
        self.cfg = cfg
        self.experiment_name = experiment_name
        self.device = local_device(resolve_device(cfg.SOLVER.DEVICE))
        self.amp_dtype = autocast_dtype(self.device, cfg.SOLVER)
        self.channels_last = channels_last_enabled(cfg.SOLVER.CHANNELS_LAST, self.device, self.amp_dtype)
        self.distiller = prepare_distiller(distiller, cfg.SOLVER, self.device, self.channels_last)
        self.train_model = wrap_ddp(self.distiller, self.device, cfg.DISTRIBUTED.SYNC_BN)
        self.is_main = is_main_process()
        self.lr_scale = world_size() if cfg.DISTRIBUTED.SCALE_LR else 1
        self.train_loader = place_loader(train_loader, self.device)
        self.val_loader = place_loader(val_loader, self.device)
        self.run_dir = run_dir or os.path.join(cfg.LOG.PREFIX, experiment_name)
        ensure_writable_dir(self.run_dir)
        self.optimizer = self.init_optimizer()
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.best_acc = -1.0
        self.wandb_id: Optional[str] = None

    # -- set-up -------------------------------------------------------------------------------
    def init_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.distiller.get_learnable_parameters(), self.cfg.SOLVER)

    def autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    # -- the loop -----------------------------------------------------------------------------
    def train(self, resume: Union[bool, str] = False) -> float:
        """Train to SOLVER.EPOCHS; `resume` is True (this run's `latest`) or a checkpoint path."""
        epoch = 1
        metrics_file = MetricsFile(self.run_dir) if self.is_main else NullLog()
        if resume:
            path = os.path.join(self.run_dir, "latest") if resume is True else resume
            epoch = self.load_state(load_checkpoint(path)) + 1
            metrics_file.truncate_after(epoch - 1)
            print(f"Resumed from {path} at epoch {epoch} (best_acc {self.best_acc:.2f}).")
        else:
            metrics_file.truncate_after(0)
        if self.is_main:
            with open(os.path.join(self.run_dir, "cfg.yaml"), "w") as f:
                f.write(dump_cfg(self.cfg))
        worklog = WorkLog(self.run_dir) if self.is_main else NullLog()
        tensorboard = TensorBoardLog(self.run_dir) if self.is_main else NullLog()
        wandb_log = None
        if self.cfg.LOG.WANDB and self.is_main:
            tags = self.cfg.EXPERIMENT.TAG.split(",")
            wandb_log = WandbLog(self.cfg, self.run_dir, self.experiment_name, tags, self.wandb_id)
            self.wandb_id = wandb_log.run_id
        try:
            while epoch <= self.cfg.SOLVER.EPOCHS:
                lr, metrics = self.train_epoch(epoch)
                self.best_acc = max(self.best_acc, metrics["test_acc"])
                worklog.log(epoch, lr, metrics)
                tensorboard.log(epoch, dict(metrics, lr=lr))
                metrics_file.log(dict(epoch=epoch, lr=lr, **metrics))
                if wandb_log is not None:
                    wandb_log.log(epoch, dict(metrics, lr=lr), self.best_acc)
                self.save(epoch, metrics["test_acc"])
                epoch += 1
        finally:
            tensorboard.close()
            if wandb_log is not None:
                wandb_log.finish()
        print(f"Best accuracy: {self.best_acc:.2f}")
        worklog.finish(self.best_acc)
        return self.best_acc

    def train_epoch(self, epoch: int) -> Tuple[float, "OrderedDict[str, float]"]:
        seed_everything(self.cfg.EXPERIMENT.SEED * 100_003 + epoch + 1_000_003 * rank())
        set_sampler_epoch(self.train_loader, epoch)
        lr = learning_rate(epoch, self.cfg.SOLVER) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        meters = self.new_meters()
        term_meters: Dict[str, AverageMeter] = {}
        self.distiller.train()
        bar = tqdm(total=len(self.train_loader), desc=f"Epoch {epoch}/{self.cfg.SOLVER.EPOCHS}",
                   disable=not self.cfg.LOG.PROGRESS_BAR or not self.is_main, dynamic_ncols=True, leave=False)
        images_seen, start = 0, time.perf_counter()
        for step, batch in enumerate(self.train_loader):
            image, target, extra = self.to_device(batch)
            preds, losses, loss = self.train_iter(image, target, extra, epoch, step)
            n = self.batch_size(image)
            images_seen += n
            meters["loss"].update(loss, n)
            self.update_meters(meters, preds, target, n)
            for name, value in losses.items():
                term_meters.setdefault(name, AverageMeter()).update(value, n)
            elapsed = time.perf_counter() - start
            postfix = {name: f"{m.avg:.4f}" if name == "loss" else f"{m.avg:.2f}" for name, m in meters.items()
                       if name != "top5"}
            bar.set_postfix(**postfix, img_s=f"{images_seen / max(elapsed, 1e-9):.0f}")
            bar.update()
        bar.close()
        train_seconds = max_over_processes(time.perf_counter() - start)
        reduce_meters(meters)
        reduce_meters(term_meters)
        images_seen = int(sum_over_processes([images_seen])[0])
        metrics = self.epoch_metrics(meters)
        metrics.update((name, m.avg) for name, m in term_meters.items())
        metrics.update(train_seconds=train_seconds, img_per_s=images_seen / max(train_seconds, 1e-9))
        print(self.epoch_line(epoch, lr, metrics))
        return lr, metrics

    # -- what a task measures (classification here; mdistiller_dense overrides these) ------------
    def new_meters(self) -> Dict[str, AverageMeter]:
        """The running training meters of an epoch; "loss" is always one of them."""
        return {"loss": AverageMeter(), "top1": AverageMeter(), "top5": AverageMeter()}

    def batch_size(self, image) -> int:
        return image.size(0)

    def update_meters(self, meters: Dict[str, AverageMeter], preds, target, n: int) -> None:
        """Add a batch's task metrics (top-1 / top-5 of the predictions) to `meters`."""
        top1, top5 = accuracy(preds.detach().float(), target, topk=(1, 5))
        meters["top1"].update(top1, n)
        meters["top5"].update(top5, n)

    def epoch_metrics(self, meters: Dict[str, AverageMeter]) -> "OrderedDict[str, float]":
        """Training averages and validation results of an epoch; `test_acc` is the one `best` follows."""
        test_acc, test_acc_top5, test_loss = self.validate()
        return OrderedDict(
            train_acc=meters["top1"].avg,
            train_loss=meters["loss"].avg,
            test_acc=test_acc,
            test_acc_top5=test_acc_top5,
            test_loss=test_loss,
        )

    def epoch_line(self, epoch: int, lr: float, metrics: Dict[str, float]) -> str:
        return (f"Epoch {epoch}: lr {lr:.4g} | train loss {metrics['train_loss']:.4f} top1 {metrics['train_acc']:.2f} "
                f"| test top1 {metrics['test_acc']:.2f} top5 {metrics['test_acc_top5']:.2f} "
                f"| {metrics['img_per_s']:.0f} img/s")

    def to_device(self, batch) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        image, target = batch[0], batch[1]
        names = ("index", "contrastive_index")
        extra = {name: value.to(self.device, non_blocking=True) for name, value in zip(names, batch[2:])}
        image = image.to(self.device, non_blocking=True).float()
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, target.to(self.device, non_blocking=True), extra

    def train_iter(self, image: torch.Tensor, target: torch.Tensor, extra: Dict[str, torch.Tensor],
                   epoch: int, step: int) -> Tuple[torch.Tensor, Dict[str, float], float]:
        """One optimisation step; returns predictions, each loss term and the total as floats."""
        with self.autocast():
            preds, losses = self.train_model(image=image, target=target, epoch=epoch, **extra)
        losses = {name: value.mean() for name, value in losses.items()}
        values = self.check_finite(losses, epoch, step)
        self.backward_and_step(losses)
        return preds, values, sum(values.values())

    def backward_and_step(self, losses: Losses) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward()
        self.before_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def before_step(self) -> None:
        """Called between backward and the optimizer step (gradients in place); nothing by default."""

    def check_finite(self, losses: Losses, epoch: int, step: int) -> Dict[str, float]:
        """Loss terms as floats; NonFiniteLossError naming the term when one is NaN or inf."""
        values = {name: float(value.detach()) for name, value in losses.items()}
        bad = [name for name, value in values.items() if not torch.isfinite(torch.tensor(value))]
        if bad:
            raise NonFiniteLossError(
                f"Non-finite loss {', '.join(f'{n}={values[n]}' for n in bad)} at epoch {epoch} step {step}; "
                f"'latest' in {self.run_dir} holds the last good state. Lower SOLVER.LR or the loss weights, "
                "or turn off SOLVER.AMP, then resume with --resume."
            )
        return values

    def validate(self) -> Tuple[float, float, float]:
        """Top-1, top-5 (percent) and mean cross-entropy on the validation set."""
        self.distiller.eval()
        broadcast_buffers(self.distiller)
        results = evaluate(lambda image: self.distiller(image=image), self.val_loader, self.device, self.autocast)
        top1, top5, loss = mean_over_processes(results, self.val_loader)
        return top1, top5, loss

    # -- checkpoints --------------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"last_epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
            "scaler": self.scaler.state_dict(),
            "best_acc": self.best_acc,
            "rng": rng_state(),
            "cfg": dump_cfg(self.cfg),
            "wandb_id": self.wandb_id or "",
        }

    def student_state(self, epoch: int, acc: float) -> dict:
        return {"model": self.distiller.student.state_dict(), "epoch": epoch, "acc": acc,
                "cfg": dump_cfg(self.cfg)}

    def save(self, epoch: int, test_acc: float) -> None:
        if not self.is_main:
            return
        state, student = self.state(epoch), self.student_state(epoch, test_acc)
        join = lambda name: os.path.join(self.run_dir, name)  # noqa: E731
        save_checkpoint(state, join("latest"))
        save_checkpoint(student, join("student_latest"))
        if epoch % self.cfg.LOG.SAVE_CHECKPOINT_FREQ == 0:
            save_checkpoint(state, join(f"epoch_{epoch}"))
            save_checkpoint(student, join(f"student_{epoch}"))
        if test_acc >= self.best_acc:
            save_checkpoint(state, join("best"))
            save_checkpoint(student, join("student_best"))

    def load_state(self, state: dict) -> int:
        """Restore a full checkpoint (ours or MDistiller's); returns its epoch."""
        missing = [k for k in ("epoch", "model", "optimizer") if k not in state]
        if missing:
            raise CheckpointError(
                f"Cannot resume: checkpoint lacks {', '.join(missing)} (a student-only file?). Resume from 'latest'."
            )
        model = state["model"]
        if model and all(k.startswith("module.") for k in model):
            model = {k[len("module."):]: v for k, v in model.items()}
        load_weights(self.distiller, model, "Resume checkpoint")
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self.best_acc = float(state.get("best_acc", -1.0))
        self.wandb_id = state.get("wandb_id") or None
        return int(state["epoch"])


trainer_dict.register("crd", Trainer)
