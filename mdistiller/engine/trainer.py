"""The training loop shared by every distiller: step, validate, checkpoint, log, resume."""

import contextlib
import math
import os
import signal
import time
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode as CN

from mdistiller.engine.cfg import dump_cfg
from mdistiller.engine.checkpoint import (load_checkpoint, load_weights, remove_stale_temporaries, save_checkpoint,
                                          unwrapped)
from mdistiller.engine.distributed import (NullLog, all_gather_objects, barrier, broadcast_buffers, is_main_process,
                                           local_device, max_each_over_processes, max_over_processes,
                                           max_over_processes_tensor, mean_over_processes, rank, reduce_meters,
                                           set_sampler_epoch, sum_over_processes, world_size, wrap_ddp)
from mdistiller.engine.ema import build_ema
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.fast_path import channels_last_enabled, compile_student, place_loader, prepare_distiller
from mdistiller.engine.loggers import MetricsFile, TensorBoardLog, WandbLog, WorkLog
from mdistiller.engine.mixing import BatchMixer, build_mixer, check_mixing
from mdistiller.engine.optim import build_optimizer
from mdistiller.engine.schedule import learning_rate
from mdistiller.engine.stop import StopSignals
from mdistiller.engine.utils import (AverageMeter, autocast_context, autocast_dtype, configure_kernels,
                                     resolve_device, rng_state, seed_everything, set_rng_state, topk_accuracy)
from mdistiller.errors import CheckpointError, NonFiniteLossError, OutputDirError, TrainingStopped
from mdistiller.losses.targets import class_index
from mdistiller.registry import Registry

trainer_dict = Registry("trainer")

Losses = Dict[str, torch.Tensor]
Meters = Dict[str, AverageMeter]


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


@contextlib.contextmanager
def student_swapped(distiller: nn.Module, student: nn.Module) -> Iterator[None]:
    """`distiller` with `student` in place of its own student for the duration (then put back)."""
    own = distiller.student
    distiller.student = student
    try:
        yield
    finally:
        distiller.student = own


@trainer_dict.register("base")
class Trainer:
    """Trains `distiller` on `train_loader`, validating on `val_loader` after every epoch.

    Owns the device, autocast and the optimizer. Checkpoints keep MDistiller's names (`latest`,
    `best`, `student_latest`, `student_best`, `epoch_N`, `student_N`) under `LOG.PREFIX/<name>`.
    Batches are `(image, target, index, *fields)` with the fields the distiller declares in
    `batch_fields` (CRD: contrastive_index); all but image and target reach the distiller as
    keyword arguments.

    Speed (mdistiller/engine/fast_path.py): autocast (SOLVER.AMP), channels_last, the teacher's fast
    inference copy, torch.compile. Under torchrun (mdistiller/engine/distributed.py) `train_model`
    is the DDP wrapper of `distiller`, metrics are reduced over processes and rank 0 alone logs and
    saves; `distiller` stays the bare module, so checkpoints are the same as on one process. A step
    reads the device once (:meth:`read_step`): loss terms and metrics stay tensors until then.

    Reliability (docs/reliability.md): SIGINT / SIGTERM stop the run after the current step with
    `latest` saved mid-epoch, and `train(resume=...)` continues from there exactly; a NaN / inf loss
    term stops every process before its backward pass (or, with SOLVER.SKIP_NONFINITE, skips the
    batch on every process). Both are agreed over processes in one all-reduce per step.
    """

    def __init__(self, experiment_name: str, distiller, train_loader, val_loader, cfg: CN,
                 run_dir: Optional[str] = None) -> None:
        self.cfg = cfg
        self.experiment_name = experiment_name
        self.device = local_device(resolve_device(cfg.SOLVER.DEVICE))
        configure_kernels(bool(cfg.EXPERIMENT.DETERMINISTIC))
        self.amp_dtype = autocast_dtype(self.device, cfg.SOLVER)
        self.channels_last = channels_last_enabled(cfg.SOLVER.CHANNELS_LAST, self.device, self.amp_dtype)
        self.distiller = prepare_distiller(distiller, cfg.SOLVER, self.device, self.channels_last)
        self.train_model = wrap_ddp(self.distiller, self.device, cfg.DISTRIBUTED.SYNC_BN)
        self.ema = build_ema(self.distiller, cfg)  # of the bare student, before torch.compile
        self.ema_steps = 0  # optimizer steps the average has followed
        self.best_acc_ema = -1.0
        compile_student(self.distiller, cfg.SOLVER)
        self.is_main = is_main_process()
        self.lr_scale = world_size() if cfg.DISTRIBUTED.SCALE_LR else 1
        self.train_loader = place_loader(train_loader, self.device, self.channels_last)
        self.val_loader = place_loader(val_loader, self.device, self.channels_last)
        self.run_dir = run_dir or os.path.join(cfg.LOG.PREFIX, experiment_name)
        ensure_writable_dir(self.run_dir)
        self.optimizer = self.init_optimizer()
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.best_acc = -1.0
        self.wandb_id: Optional[str] = None
        self.wandb_tags: List[str] = cfg.EXPERIMENT.TAG.split(",")  # train_run adds the KEY:VALUE overrides
        self.skip_nonfinite = bool(cfg.SOLVER.SKIP_NONFINITE)
        self.skipped_steps = 0
        self.stop = StopSignals(announce=False)  # the active one while train() runs
        self.stop_signal = 0  # the signal every process agreed to stop on after this step, or 0
        self.resume_progress: Optional[dict] = None  # where a mid-epoch checkpoint stopped
        self.mixes = "MIXUP" in cfg and (cfg.MIXUP.ALPHA > 0 or cfg.MIXUP.CUTMIX > 0 or cfg.SOLVER.LABEL_SMOOTHING > 0)
        if self.mixes:
            check_mixing(cfg)
        self.mixer: Optional[BatchMixer] = None  # built at the first batch, once the class count is known

    # -- set-up -------------------------------------------------------------------------------
    def init_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.distiller.get_learnable_parameters(), self.cfg.SOLVER, self.distiller)

    def autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    # -- the loop -----------------------------------------------------------------------------
    def train(self, resume: Union[bool, str] = False) -> float:
        """Train to SOLVER.EPOCHS (:attr:`num_epochs`); `resume` is True (this run's `latest`) or a checkpoint path.

        Raises TrainingStopped after saving `latest` when SIGINT or SIGTERM arrives.
        """
        epoch = 1
        metrics_file = MetricsFile(self.run_dir) if self.is_main else NullLog()
        path = os.path.join(self.run_dir, "latest") if resume is True else resume
        if resume and not self.checkpoint_exists(path):
            print(f"No checkpoint at {path} yet: training from the beginning.")
            resume = False
        if resume:
            epoch = self.load_state(load_checkpoint(path)) + 1
            metrics_file.truncate_after(epoch - 1)
            step = f" step {self.resume_progress['step']}" if self.resume_progress else ""
            print(f"Resumed from {path} at epoch {epoch}{step} (best_acc {self.best_acc:.2f}).")
        else:
            metrics_file.truncate_after(0)
        if self.is_main:
            remove_stale_temporaries(self.run_dir)
            with open(os.path.join(self.run_dir, "cfg.yaml"), "w") as f:
                f.write(dump_cfg(self.cfg))
        worklog = WorkLog(self.run_dir) if self.is_main else NullLog()
        tensorboard = TensorBoardLog(self.run_dir) if self.is_main else NullLog()
        wandb_log = None
        if self.cfg.LOG.WANDB and self.is_main:
            wandb_log = WandbLog(self.cfg, self.run_dir, self.experiment_name, self.wandb_tags, self.wandb_id)
            self.wandb_id = wandb_log.run_id
        try:
            with StopSignals(announce=self.is_main) as self.stop:
                while epoch <= self.num_epochs:
                    signum = int(max_over_processes(self.stop.received or 0))  # one during validation or saving
                    if signum:
                        raise self.stopped(signum, epoch, 0)
                    lr, metrics = self.train_epoch(epoch)
                    self.best_acc = max(self.best_acc, metrics["test_acc"])
                    self.best_acc_ema = max(self.best_acc_ema, metrics.get("test_acc_ema", -1.0))
                    worklog.log(epoch, lr, metrics)
                    tensorboard.log(epoch, dict(metrics, lr=lr))
                    metrics_file.log(dict(epoch=epoch, lr=lr, **metrics))
                    if wandb_log is not None:
                        wandb_log.log(epoch, dict(metrics, lr=lr), self.best_acc)
                    self.save(epoch, metrics["test_acc"])
                    if "test_acc_ema" in metrics:
                        self.save_ema(epoch, metrics["test_acc_ema"])
                    epoch += 1
        finally:
            tensorboard.close()
            if wandb_log is not None:
                wandb_log.finish()
        print(f"Best accuracy: {self.best_acc:.2f}")
        if self.ema is not None:
            print(f"Best EMA accuracy: {self.best_acc_ema:.2f} (student_ema_best; student_best holds the raw student)")
        worklog.finish(self.best_acc)
        return self.best_acc

    @staticmethod
    def checkpoint_exists(path: str) -> bool:
        """Whether the checkpoint to resume from exists, agreed by every process.

        A scheduler restarting a job killed before its first checkpoint passes `--resume` all the
        same: then no process sees the file and the run starts over. CheckpointError when only some
        processes see it (a run directory on a file system some machines do not share).
        """
        found = os.path.isfile(path)
        any_found, any_missing = max_each_over_processes([float(found), float(not found)])
        if any_found and any_missing:
            raise CheckpointError(f"Checkpoint {path} is visible to some processes only: put LOG.PREFIX on a "
                                  "file system every machine sees.")
        return found

    @property
    def num_epochs(self) -> int:
        """The epochs :meth:`train` runs (the dense trainer's ITERS runs: validation intervals)."""
        return self.cfg.SOLVER.EPOCHS

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.train_loader)

    def epoch_batches(self, epoch: int) -> Iterator:
        """The batches of `epoch`, drawn from the RNG seeded for it (the sampler's epoch set)."""
        seed_everything(self.cfg.EXPERIMENT.SEED * 100_003 + epoch + 1_000_003 * rank())
        set_sampler_epoch(self.train_loader, epoch)
        return iter(self.train_loader)

    def epoch_learning_rate(self, epoch: int) -> float:
        """The LR set at the start of `epoch` (and logged for it)."""
        return learning_rate(epoch, self.cfg.SOLVER) * self.lr_scale

    def train_epoch(self, epoch: int) -> Tuple[float, "OrderedDict[str, float]"]:
        batches = self.epoch_batches(epoch)
        lr = self.epoch_learning_rate(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        meters = self.new_meters()
        term_meters: Meters = {}
        self.skipped_steps = 0
        self.distiller.train()
        first_step = self.restore_progress(batches, meters, term_meters)
        bar = tqdm(total=self.steps_in_epoch(epoch), initial=first_step, desc=f"Epoch {epoch}/{self.num_epochs}",
                   disable=not self.cfg.LOG.PROGRESS_BAR or not self.is_main, dynamic_ncols=True, leave=False)
        images_seen, start = 0, time.perf_counter()
        for step, batch in enumerate(batches, start=first_step):
            image, target, extra = self.to_device(batch)
            image, target = self.mix(image, target)
            statistics, losses, loss = self.train_iter(image, target, extra, epoch, step)
            if losses is not None:
                n = self.batch_size(image)
                images_seen += n
                meters["loss"].update(loss, n)
                self.update_meters(meters, statistics, n)
                for name, value in losses.items():
                    term_meters.setdefault(name, AverageMeter()).update(value, n)
            elapsed = time.perf_counter() - start
            postfix = {name: f"{m.avg:.4f}" if name == "loss" else f"{m.avg:.2f}" for name, m in meters.items()
                       if name != "top5"}
            bar.set_postfix(**postfix, img_s=f"{images_seen / max(elapsed, 1e-9):.0f}")
            bar.update()
            if self.stop_signal:
                bar.close()
                self.save_progress(epoch, step + 1, meters, term_meters)
                raise self.stopped(self.stop_signal, epoch, step + 1)
        bar.close()
        train_seconds = max_over_processes(time.perf_counter() - start)
        reduce_meters(meters)
        reduce_meters(term_meters)
        images_seen = int(sum_over_processes([images_seen])[0])
        metrics = self.epoch_metrics(meters)
        metrics.update((name, m.avg) for name, m in term_meters.items())
        metrics.update(train_seconds=train_seconds, img_per_s=images_seen / max(train_seconds, 1e-9))
        skipped = ""
        if self.skip_nonfinite:
            metrics["skipped_steps"] = self.skipped_steps
            skipped = f" | skipped {self.skipped_steps} non-finite steps" if self.skipped_steps else ""
        print(self.epoch_line(epoch, lr, metrics) + skipped)
        return lr, metrics

    # -- what a task measures (classification here; mdistiller_dense overrides these) ------------
    def new_meters(self) -> Meters:
        """The running training meters of an epoch; "loss" is always one of them."""
        return {"loss": AverageMeter(), "top1": AverageMeter(), "top5": AverageMeter()}

    def batch_size(self, image) -> int:
        return image.size(0)

    def step_statistics(self, preds, target) -> torch.Tensor:
        """A batch's task metrics as a 1-d tensor on the device (read to the host with the loss
        terms, in the step's one transfer): top-1 and top-5 accuracy of the predictions."""
        return topk_accuracy(preds.detach().float(), class_index(target), topk=(1, 5))

    def update_meters(self, meters: Meters, statistics: List[float], n: int) -> None:
        """Add a batch's :meth:`step_statistics`, read to the host, to `meters`."""
        top1, top5 = statistics
        meters["top1"].update(top1, n)
        meters["top5"].update(top5, n)

    def epoch_metrics(self, meters: Meters) -> "OrderedDict[str, float]":
        """Training averages and validation results of an epoch; `test_acc` is the one `best` follows."""
        test_acc, test_acc_top5, test_loss = self.validate()
        metrics = OrderedDict(
            train_acc=meters["top1"].avg,
            train_loss=meters["loss"].avg,
            test_acc=test_acc,
            test_acc_top5=test_acc_top5,
            test_loss=test_loss,
        )
        if self.ema is not None:
            metrics["test_acc_ema"], metrics["test_acc_top5_ema"], metrics["test_loss_ema"] = self.validate_ema()
        return metrics

    def epoch_line(self, epoch: int, lr: float, metrics: Dict[str, float]) -> str:
        ema = ""
        if "test_acc_ema" in metrics:
            ema = (f"| EMA test top1 {metrics['test_acc_ema']:.2f} top5 {metrics['test_acc_top5_ema']:.2f} "
                   "(student_best: raw weights, student_ema_best: EMA weights) ")
        return (f"Epoch {epoch}: lr {lr:.4g} | train loss {metrics['train_loss']:.4f} top1 {metrics['train_acc']:.2f} "
                f"| test top1 {metrics['test_acc']:.2f} top5 {metrics['test_acc_top5']:.2f} {ema}"
                f"| {metrics['img_per_s']:.0f} img/s")

    def restore_progress(self, batches: Iterator, meters: Meters, term_meters: Meters) -> int:
        """After resuming a mid-epoch checkpoint: skip the batches its steps used, restore the RNG
        state and the epoch's running sums; returns the step to continue from (0 otherwise).

        The skipped batches are drawn, not just counted, so the sampler, the augmentation and the
        DataLoader workers' RNGs advance exactly as in an uninterrupted epoch.
        """
        progress, self.resume_progress = self.resume_progress, None
        if not progress:
            return 0
        for _ in range(progress["step"]):
            next(batches)
        set_rng_state(progress["rng"], self.device)
        self.skipped_steps = int(progress["skipped"])
        if self.is_main:  # the saved sums are over every process; the others start from zero
            for saved, target in ((progress["meters"], meters), (progress["terms"], term_meters)):
                for name, (total, count) in saved.items():
                    meter = target.setdefault(name, AverageMeter())
                    meter.sum, meter.count = float(total), int(count)
        return int(progress["step"])

    def save_progress(self, epoch: int, step: int, meters: Meters, term_meters: Meters) -> None:
        """Write `latest` after `step` steps of `epoch` (a clean stop); every process takes part."""
        reduce_meters(meters)
        reduce_meters(term_meters)
        rng_of_ranks = all_gather_objects(rng_state(self.device))
        if self.is_main:
            state = self.state(epoch - 1)
            state["rng_ranks"] = rng_of_ranks
            state["progress"] = {
                "epoch": epoch,
                "step": step,
                "skipped": self.skipped_steps,
                "meters": {name: [m.sum, m.count] for name, m in meters.items()},
                "terms": {name: [m.sum, m.count] for name, m in term_meters.items()},
            }
            save_checkpoint(state, os.path.join(self.run_dir, "latest"))
        barrier()  # no process exits (and has torchrun end the others) before rank 0 has saved

    def stopped(self, signum: int, epoch: int, step: int) -> TrainingStopped:
        """The exception ending a run stopped by `signum` after `step` steps of `epoch` (0: before it)."""
        name = signal.Signals(signum).name
        if not os.path.isfile(os.path.join(self.run_dir, "latest")):
            return TrainingStopped(f"Stopped by {name} before the first checkpoint; nothing to resume.", 128 + signum)
        where = f"epoch {epoch} step {step}/{self.steps_in_epoch(epoch)}" if step else f"the end of epoch {epoch - 1}"
        command = f"python tools/train.py --resume {self.run_dir}"
        if world_size() > 1:
            command = f"tools/train.py --resume {self.run_dir} under the same torchrun command"
        return TrainingStopped(
            f"Stopped by {name} at {where}; 'latest' saved in {self.run_dir}. Resume with: {command}", 128 + signum)

    def to_device(self, batch) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        image, target = batch[0], batch[1]
        names = ("index", *getattr(self.distiller, "batch_fields", ()))  # what the method declares it needs
        extra = {name: value.to(self.device, non_blocking=True) for name, value in zip(names, batch[2:])}
        image = image.to(self.device, non_blocking=True).float()
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, target.to(self.device, non_blocking=True), extra

    def mix(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The batch under MIXUP.* / SOLVER.LABEL_SMOOTHING (mdistiller/engine/mixing.py): mixed
        images and a (B, K) soft target, which the student and the teacher then both see; as it is
        otherwise. timm's Mixup draws from numpy's global RNG, which the checkpoints hold."""
        if not self.mixes:
            return image, target
        if self.mixer is None:
            self.mixer = build_mixer(self.cfg, self.student_classes(image))
        return self.mixer(image, target)

    @torch.no_grad()
    def student_classes(self, image: torch.Tensor) -> int:
        """The number of classes the student predicts: its logits' width on one image, in eval
        mode (no running statistic changes, no random draw)."""
        student = self.distiller.student
        training = student.training
        student.eval()
        try:
            logits = student(image[:1])[0]
        finally:
            student.train(training)
        return int(logits.shape[1])

    def train_iter(self, image: torch.Tensor, target: torch.Tensor, extra: Dict[str, torch.Tensor],
                   epoch: int, step: int) -> Tuple[List[float], Optional[Dict[str, float]], float]:
        """One optimisation step; returns the batch's :meth:`step_statistics`, each loss term and
        the total, as numbers read from the device in one transfer (:meth:`read_step`).

        A skipped step (a non-finite term with SOLVER.SKIP_NONFINITE) returns None for the terms: no
        optimizer step, and the normalisation statistics it changed restored (:meth:`restored_buffers`).
        """
        buffers = [b.clone() for b in self.restored_buffers()] if self.skip_nonfinite else []
        with self.autocast(), self.forward_context():
            preds, losses = self.train_model(image=image, target=target, epoch=epoch, **extra)
        losses = {name: value.mean() for name, value in losses.items()}
        values, statistics, nonfinite = self.read_step(losses, self.step_statistics(preds, target))
        if not self.agree_on_step(values, nonfinite, epoch, step):
            for buffer, saved in zip(self.restored_buffers(), buffers):
                buffer.copy_(saved)
            self.skipped_steps += 1
            return statistics, None, float("nan")
        self.backward_and_step(losses)
        return statistics, values, sum(values.values())

    def read_step(self, losses: Losses, statistics: torch.Tensor) -> Tuple[Dict[str, float], List[float], List[bool]]:
        """The step's one host sync: every loss term, the task `statistics` and, agreed over
        processes, whether each term is non-finite somewhere and the stop signal (sets `stop_signal`).

        The flags and the signal number are reduced on the device in one all-reduce (MAX; none on
        one process), then one device-to-host copy reads them with the values.
        """
        terms = torch.stack([value.detach().double() for value in losses.values()])
        flags = torch.cat([(~torch.isfinite(terms)).double(),
                           torch.full((1,), float(self.stop.received or 0), dtype=torch.float64, device=terms.device)])
        flags = max_over_processes_tensor(flags)
        host = torch.cat([flags, terms, statistics.double().reshape(-1)]).tolist()
        count = len(losses)
        *nonfinite, signum = host[:count + 1]
        self.stop_signal = int(signum)
        values = dict(zip(losses, host[count + 1:2 * count + 1]))
        return values, host[2 * count + 1:], [bool(flag) for flag in nonfinite]

    def restored_buffers(self) -> List[torch.Tensor]:
        """What a skipped step (SOLVER.SKIP_NONFINITE) puts back: the running statistics (mean,
        variance, batch counter) of the normalisation layers outside the frozen teacher, which a
        forward pass in train mode updates. Nothing else is copied before each step: a method's own
        per-batch state stays as the forward pass left it (CRD's memory banks, 51 MB on CIFAR-100:
        a skipped batch's rows keep its update).
        """
        return [buffer for name, module in self.distiller.named_modules()
                if isinstance(module, nn.modules.batchnorm._NormBase) and name.split(".")[0] != "teacher"
                for buffer in module.buffers(recurse=False)]

    def forward_context(self):
        """The context of the training forward pass; none by default (DOT: DDP's `no_sync`)."""
        return contextlib.nullcontext()

    def backward_and_step(self, losses: Losses) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward()
        self.before_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.update_ema()

    def before_step(self) -> None:
        """Called between backward and the optimizer step (gradients in place): clips the learnable
        parameters' total gradient norm (2-norm over all of them) to SOLVER.GRAD_CLIP when it is set,
        after unscaling float16 gradients."""
        clip = self.cfg.SOLVER.GRAD_CLIP
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.distiller.get_learnable_parameters(), clip)

    def update_ema(self) -> None:
        """Move the student's EMA (EMA.ENABLE) towards the student after an optimizer step."""
        if self.ema is None:
            return
        self.ema_steps += 1
        self.ema.update(self.distiller.student, step=self.ema_steps if self.cfg.EMA.WARMUP else None)

    def agree_on_step(self, values: Dict[str, float], nonfinite: List[bool], epoch: int, step: int) -> bool:
        """Whether to take this step, agreed by every process before any starts its backward pass.

        `nonfinite` holds, per loss term, whether it is NaN or inf on any process (reduced by
        :meth:`read_step`): such a term raises NonFiniteLossError on every process (naming the
        term, epoch and step, counted from 1), or with SOLVER.SKIP_NONFINITE returns False on every
        process.
        """
        bad = [name for name, flag in zip(values, nonfinite) if flag]
        if not bad:
            return True
        if self.skip_nonfinite:
            return False
        terms = ", ".join(f"{n}={values[n]}" if not math.isfinite(values[n]) else f"{n} (on another process)"
                          for n in bad)
        latest = os.path.join(self.run_dir, "latest")
        kept = (f"'latest' in {self.run_dir} holds the last good state" if os.path.isfile(latest)
                else "no checkpoint was written")
        raise NonFiniteLossError(
            f"Non-finite loss {terms} at epoch {epoch} step {step + 1}/{self.steps_in_epoch(epoch)}; {kept}. "
            "Lower SOLVER.LR or the loss weights, or turn off SOLVER.AMP, then resume with --resume; "
            "or set SOLVER.SKIP_NONFINITE True to skip such batches."
        )

    def validate(self) -> Tuple[float, float, float]:
        """Top-1, top-5 (percent) and mean cross-entropy on the validation set."""
        self.distiller.eval()
        broadcast_buffers(self.distiller)
        results = evaluate(lambda image: self.distiller(image=image), self.val_loader, self.device, self.autocast)
        top1, top5, loss = mean_over_processes(results, self.val_loader)
        return top1, top5, loss

    def validate_ema(self) -> Tuple[float, float, float]:
        """:meth:`validate` for the student's EMA (rank 0's normalisation statistics on every process),
        through the method's own prediction path: the distiller's `forward_test` with the EMA in the
        student's place (SFAKD's projector and the teacher's classifier, DEIT's head fusion); the
        modules beside the student are the current ones (the EMA averages the student alone)."""
        broadcast_buffers(self.ema.module)
        self.distiller.eval()
        with student_swapped(self.distiller, self.ema.module):
            results = evaluate(self.distiller.forward_test, self.val_loader, self.device, self.autocast)
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
            "rng": rng_state(self.device),
            "cfg": dump_cfg(self.cfg),
            "wandb_id": self.wandb_id or "",
            **self.ema_state(),
        }

    def ema_state(self) -> dict:
        """The EMA's part of a full checkpoint (nothing without EMA.ENABLE)."""
        if self.ema is None:
            return {}
        return {"ema": self.ema.module.state_dict(), "ema_steps": self.ema_steps, "best_acc_ema": self.best_acc_ema}

    def student_state(self, epoch: int, acc: float) -> dict:
        return {"model": self.distiller.student.state_dict(), "epoch": epoch, "acc": acc,
                "cfg": dump_cfg(self.cfg), "weights": "raw"}

    def save_ema(self, epoch: int, test_acc_ema: float) -> None:
        """`student_ema_latest` and, at its best validation accuracy, `student_ema_best`: the EMA's
        weights in a student file (`"weights": "ema"`); `student_best` keeps the raw student's."""
        if not self.is_main or self.ema is None:
            return
        student = {"model": self.ema.module.state_dict(), "epoch": epoch, "acc": test_acc_ema,
                   "cfg": dump_cfg(self.cfg), "weights": "ema"}
        save_checkpoint(student, os.path.join(self.run_dir, "student_ema_latest"))
        if test_acc_ema >= self.best_acc_ema:
            save_checkpoint(student, os.path.join(self.run_dir, "student_ema_best"))

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
        load_weights(self.distiller, unwrapped(state["model"]), "Resume checkpoint")
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            set_rng_state(state["rng"], self.device)
        self.best_acc = float(state.get("best_acc", -1.0))
        if self.ema is not None:
            self.load_ema(state)
        self.wandb_id = state.get("wandb_id") or None
        progress = state.get("progress")
        if progress:  # a clean stop mid-epoch: train_epoch continues after its last step
            ranks = state.get("rng_ranks") or []
            rng = ranks[rank()] if len(ranks) == world_size() else state["rng"]
            self.resume_progress = dict(progress, rng=rng)
        return int(state["epoch"])

    def load_ema(self, state: dict) -> None:
        """The EMA from a full checkpoint; one saved without EMA restarts it from the student."""
        if "ema" in state:
            load_weights(self.ema.module, unwrapped(state["ema"]), "The checkpoint's EMA")
            self.ema_steps = int(state.get("ema_steps", 0))
            self.best_acc_ema = float(state.get("best_acc_ema", -1.0))
            return
        print("The checkpoint holds no EMA of the student (saved with EMA.ENABLE off): the EMA starts from "
              "the resumed student.")
        self.ema.module.load_state_dict(self.distiller.student.state_dict())


trainer_dict.register("crd", Trainer)
