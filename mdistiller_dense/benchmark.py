"""What a dense training step costs (tools/bench.py on a detection or segmentation config): the
student alone, the floor (the student's task step plus the teacher's backbone on the same batch:
what every dense method pays) and each method, with the parameters and forward FLOPs of the
student, the teacher and the method's own modules.

The subjects are :class:`mdistiller.benchmark.Subject`: a real :class:`DenseTrainer` (autocast,
channels-last as the config says) stepping on one fixed batch, the first of the configured training
loader (images with their boxes or label maps), on the configured device; they are timed in turns
and summarised as in classification (median step time, peak memory, FLOPs of one training step per
image through ``torch.utils.flop_counter``, which counts convolutions and matmuls: a step is the
forward, the backward and the teacher's inference). Per method, ``method_gflops_per_img`` is its step's
FLOPs minus the floor's: the work of the method's own modules and loss, forward and backward.
``models`` holds the student's and the teacher's parameters and forward FLOPs per image (eval mode,
on the batch), the numbers CanKD's tables report.
"""

import copy
import os
import tempfile
from typing import Dict, Iterable, List

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.benchmark import Subject, failure, measure_in_turns, overheads, run_settings, with_values
from mdistiller.engine.stages import stages_of
from mdistiller.engine.utils import resolve_device
from mdistiller_dense.build import build_dense_teacher
from mdistiller_dense.costs import forward_flops, parameter_count
from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.distillers import DenseDistiller, dense_distiller_dict
from mdistiller_dense.backbones import TORCHVISION
from mdistiller_dense.models import build_dense_model, task_of

__all__ = ["DenseFloor", "forward_flops", "run_dense_benchmark"]


class DenseFloor(DenseDistiller):
    """The student's task losses and the teacher's backbone on the batch the student saw, no loss of
    its own: the cost any dense method pays before its own work."""

    def distill(self, s_levels: List[Tensor], t_levels: List[Tensor], batch, **extra) -> Dict[str, Tensor]:
        return {}


def _teacher(cfg: CN, num_classes: int) -> nn.Module:
    """The teacher with its trained weights when DISTILLER.TEACHER_WEIGHTS is there, else randomly
    initialised (a step costs the same with any weights)."""
    spec = cfg.DISTILLER.TEACHER_WEIGHTS
    found = bool(spec) and (spec.startswith(TORCHVISION) or os.path.isfile(spec))
    if not found:
        print(f"No teacher weights at {spec or '(DISTILLER.TEACHER_WEIGHTS unset)'}: timing a randomly initialised "
              f"{cfg.DISTILLER.TEACHER}.")
    return build_dense_teacher(cfg, num_classes, weights=found)


def run_dense_benchmark(cfg: CN, methods: Iterable[str], iters: int = 20, warmup: int = 3) -> Dict:
    """Student alone, floor and each of `methods` on the dense config's pair, device and batch.

    Returns the record tools/bench.py writes as JSON: ``device``, ``task``, ``batch_size``,
    ``input_size`` (h, w of the batch tensor), ``models`` (student / teacher ``params`` and
    ``forward_gflops_per_img``), ``student_only``, ``floor`` and ``methods`` (each with ``img_per_s``,
    ``step_ms``, ``peak_mem_mb``, ``gflops_per_img``, ``extra_params``; methods also
    ``method_gflops_per_img`` and the overheads over the floor and the student, or ``error``).
    """
    # LR 0: every step does the same work and repeated steps on one batch cannot drift into non-finite losses.
    cfg = with_values(cfg, {"SOLVER.LR": 0.0, "SOLVER.WARMUP_ITERS": 0, "DATASET.NUM_WORKERS": 0})
    device = resolve_device(cfg.SOLVER.DEVICE)
    train_loader, _, num_classes = build_dense_loaders(cfg)
    batch = list(next(iter(train_loader)))
    teacher = _teacher(cfg, num_classes)
    run_dir = tempfile.mkdtemp(prefix="mdistiller_dense_bench_")

    def subject(name: str, method_cfg: CN, cls) -> Subject:
        for stage in stages_of(cls.stages):
            method_cfg = with_values(method_cfg, stage.stand_in(method_cfg, copy.deepcopy(teacher), run_dir))
        torch.manual_seed(0)
        student = build_dense_model(cfg.DISTILLER.STUDENT, num_classes, cfg.MODEL)
        with_teacher = None if cls is dense_distiller_dict["NONE"] else copy.deepcopy(teacher)
        distiller = cls(student, with_teacher, method_cfg, num_classes=num_classes)
        return Subject(name, method_cfg, distiller, len(train_loader.dataset), num_classes, run_dir, batch=batch,
                       train_loader=train_loader)

    base = subject("student_only", with_values(cfg, {"DISTILLER.TYPE": "NONE"}), dense_distiller_dict["NONE"])
    floor = subject("floor", cfg, DenseFloor)
    images = floor.image
    per_image = lambda flops: flops / len(images) / 1e9  # noqa: E731
    distiller = floor.trainer.distiller
    record = {
        "device": str(device),
        "task": task_of(cfg.DISTILLER.STUDENT),
        "batch_size": len(images),
        "input_size": list(images[0].shape[-2:]),
        "teacher": cfg.DISTILLER.TEACHER,
        "student": cfg.DISTILLER.STUDENT,
        "settings": run_settings(base.trainer, cfg),
        "iters": iters,
        "load_average_before": list(os.getloadavg()),
        "models": {role: {"params": parameter_count(model), "forward_gflops_per_img": per_image(forward_flops(model, images))}
                   for role, model in (("student", distiller.student), ("teacher", distiller.teacher))},
        "methods": {},
    }
    for method in methods:
        try:
            measured = subject(method, with_values(cfg, {"DISTILLER.TYPE": method}), dense_distiller_dict[method])
            window = measure_in_turns([base, floor, measured], iters, warmup)
        except Exception as err:  # one method failing must not hide the others' numbers
            record["methods"][method] = failure(err)
            continue
        entry = measured.summary()
        entry.update(overheads(window, method))
        if entry["gflops_per_img"] is not None and floor.gflops is not None:
            entry["method_gflops_per_img"] = entry["gflops_per_img"] - floor.gflops
        record["methods"][method] = entry
        del measured
    record["student_only"] = base.summary()
    record["floor"] = floor.summary()
    record["load_average_after"] = list(os.getloadavg())
    return record
