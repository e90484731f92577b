"""What a training step costs: the student alone, the floor (student step + teacher inference) and
distillers, measured in one process with the trainer's own step (tools/bench.py).

Each subject is a real trainer (the configured SOLVER.TRAINER, with autocast, channels_last and the
fast teacher as the config says) stepping on one fixed random batch on the configured device, so
data loading is left out (:func:`loader_throughput` measures it apart). Subjects are timed in
turns (student, floor, distiller, student, floor, distiller, ...) so that a change of load on a
shared machine hits them alike; a distiller's overhead is the ratio of its median step time to the
floor's median over the same turns.

Per subject: images/s (batch / median step), median step time, peak memory during its steps (CUDA
max allocated; on the CPU the process's peak resident set, reset through /proc/self/clear_refs
before each step, so it includes the process's baseline), FLOPs per image of one training step
(forward, backward, teacher inference; torch.utils.flop_counter counts matmuls, convolutions and
attention — on the CPU too, whose fused attention kernel the counter does not know by itself: a
ViT's ``scaled_dot_product_attention`` is counted as its two batched matmuls, as the counter does
for the CUDA kernels) and the parameters the method adds.
"""

import copy
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from yacs.config import CfgNode as CN

from mdistiller.distillers import Distiller, distiller_dict
from mdistiller.engine.build import build_role_model, build_teacher, teacher_checkpoint_path
from mdistiller.engine.stages import stages_of
from mdistiller.engine.trainer import trainer_dict
from mdistiller.engine.utils import resolve_device
from mdistiller.models.external import is_external_name

__all__ = ["ABLATION", "CPU_ATTENTION_FLOPS", "DATASET_SHAPES", "EAGER_FP32", "PeakMemory", "Subject", "TeacherFloor",
           "failure", "loader_throughput", "measure_in_turns", "overheads", "run_benchmark", "run_settings", "with_values"]

# (training images, classes) per DATASET.TYPE, without reading the data.
DATASET_SHAPES = {"cifar100": (50000, 100), "digits": (1437, 10), "tiny_imagenet": (100000, 200),
                  "imagenet": (1281167, 1000)}
# The reference the speed targets are stated against: float32, eager, no fast path.
EAGER_FP32 = {"SOLVER.AMP": False, "SOLVER.CHANNELS_LAST": False, "SOLVER.FAST_TEACHER": False,
              "SOLVER.COMPILE": False}
# The fast path switched on one piece at a time, from EAGER_FP32 up to the defaults.
ABLATION = {
    "fp32 eager, no fast path": EAGER_FP32,
    "+ channels_last": dict(EAGER_FP32, **{"SOLVER.CHANNELS_LAST": True}),
    "+ autocast": dict(EAGER_FP32, **{"SOLVER.CHANNELS_LAST": True, "SOLVER.AMP": True}),
}


class TeacherFloor(Distiller):
    """The student's cross-entropy step plus the teacher's inference: the floor any distiller pays."""

    def __init__(self, student, teacher, cfg=None, **data_info) -> None:
        super().__init__(student, teacher)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        logits, _ = self.student(image)
        self.teacher_forward(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


class PeakMemory:
    """Peak memory of the steps between :meth:`reset` and :meth:`read`, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak resident set size (VmHWM), Linux >= 4.0
        except OSError:
            pass

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# The CPU's fused attention, absent from torch.utils.flop_counter's registry (it has the CUDA kernels').
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


class Subject:
    """One measured configuration: a trainer around `distiller` and a fixed batch on its device."""

    def __init__(self, name: str, cfg: CN, distiller: Distiller, num_data: int, num_classes: int,
                 run_dir: str, batch: Optional[list] = None, train_loader=None) -> None:
        """`batch`: the fixed batch to step on (default: random images and labels); `train_loader`: for
        trainers that read its length (the dense one)."""
        self.name = name
        self.trainer = trainer_dict[cfg.SOLVER.TRAINER](name, distiller, train_loader, None, cfg, run_dir=run_dir)
        if batch is None:
            size, count = cfg.DATASET.IMAGE_SIZE, cfg.SOLVER.BATCH_SIZE
            generator = torch.Generator().manual_seed(0)
            batch = [torch.randn(count, 3, size, size, generator=generator),
                     torch.randint(0, num_classes, (count,), generator=generator),
                     torch.randint(0, num_data, (count,), generator=generator)]
            if cfg.DISTILLER.TYPE == "CRD" and "CRD" in cfg:
                batch.append(torch.randint(0, num_data, (count, cfg.CRD.NCE.K + 1), generator=generator))
        self.image, self.target, self.extra = self.trainer.to_device(batch)
        self.batch_size = len(batch[0])
        self.times: List[float] = []
        self.peaks: List[float] = []
        self.memory = PeakMemory(self.trainer.device)
        self.gflops: Optional[float] = None

    def step(self) -> None:
        self.trainer.distiller.train()
        self.trainer.train_iter(self.image, self.target, self.extra, epoch=1, step=0)

    def warm_up(self, steps: int) -> None:
        """`steps` untimed steps (kernel selection, building the teacher's copy), then a FLOP-counted one."""
        for _ in range(steps):
            self.step()
        try:
            with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
                self.step()
            self.gflops = counter.get_total_flops() / self.batch_size / 1e9
        except Exception:  # compiled graphs may refuse the counter's dispatch mode; FLOPs are then unknown
            self.gflops = None

    def timed_step(self) -> None:
        device = self.trainer.device
        self.memory.reset()
        _synchronize(device)
        start = time.perf_counter()
        self.step()
        _synchronize(device)
        self.times.append(time.perf_counter() - start)
        self.peaks.append(self.memory.read())

    def summary(self, times: Optional[List[float]] = None) -> Dict[str, float]:
        step = statistics.median(times or self.times)
        return {
            "img_per_s": self.batch_size / step,
            "step_ms": step * 1e3,
            "peak_mem_mb": max(self.peaks),
            "gflops_per_img": self.gflops,
            "extra_params": self.trainer.distiller.get_extra_parameters(),
        }


def _teacher_factory(cfg: CN, num_classes: int) -> Callable[[], torch.nn.Module]:
    """A function giving a fresh copy of the teacher: trained weights when the file is there,
    else a randomly initialised one (the step's cost does not depend on the weights)."""
    path = teacher_checkpoint_path(cfg)
    torchvision_weighted = cfg.DATASET.TYPE == "imagenet" and not is_external_name(cfg.DISTILLER.TEACHER)
    if torchvision_weighted or (path and os.path.isfile(path)):
        teacher = build_teacher(cfg, num_classes)
    else:
        where = f"at {path}" if path else "(DISTILLER.TEACHER_WEIGHTS unset)"
        print(f"No teacher weights {where}: timing a randomly initialised {cfg.DISTILLER.TEACHER}.")
        teacher = build_role_model(cfg, "TEACHER", num_classes)
    return lambda: copy.deepcopy(teacher)


def with_values(cfg: CN, values: Dict[str, object]) -> CN:
    """A frozen copy of `cfg` with `values` ({"SECTION.KEY": value}) set."""
    out = cfg.clone()
    out.defrost()
    for full_key, value in values.items():
        node = out
        *path, leaf = full_key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    out.freeze()
    return out


def run_settings(trainer, cfg: CN) -> Dict[str, object]:
    """The settings a step ran under: autocast dtype, channels-last, fast teacher, compile, cuDNN, threads."""
    return {
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32",
        "channels_last": trainer.channels_last,
        "fast_teacher": bool(cfg.SOLVER.FAST_TEACHER),
        "compile": bool(cfg.SOLVER.COMPILE),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # set by the trainer, as in training
        "threads": torch.get_num_threads(),
    }


def measure_in_turns(subjects: List[Subject], iters: int, warmup: int) -> Dict[str, List[float]]:
    """Warm every subject up, then time them in turns; returns each one's times of this window."""
    for subject in subjects:
        subject.warm_up(warmup)
    start = {s.name: len(s.times) for s in subjects}
    for _ in range(iters):
        for subject in subjects:
            subject.timed_step()
    return {s.name: s.times[start[s.name]:] for s in subjects}


def overheads(window: Dict[str, List[float]], name: str) -> Dict[str, float]:
    """`name`'s median step time over the floor's and over the student's, from the same turns."""
    step = statistics.median(window[name])
    return {"overhead_vs_floor": step / statistics.median(window["floor"]),
            "overhead_vs_student": step / statistics.median(window["student_only"])}


def failure(err: Exception) -> Dict[str, str]:
    """A method's record when it could not be measured: the error's type and first line."""
    return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def run_benchmark(cfg: CN, methods: Iterable[str], iters: int = 20, warmup: int = 3,
                  variants: Optional[Dict[str, Dict[str, object]]] = None) -> Dict:
    """Student alone, floor and each of `methods` on `cfg`'s pair, device and batch size.

    Returns the record tools/bench.py writes as JSON (see there). `variants` ({name: {KEY: value}})
    are other settings of the configured distiller timed in the same turns (e.g. EAGER_FP32); each
    gets its summary and the configured one's speed-up over it.
    """
    # LR 0: every step does the same work (the optimizer still runs) but repeated steps on one random
    # batch cannot drift the weights into non-finite losses.
    cfg = with_values(cfg, {"SOLVER.LR": 0.0})
    device = resolve_device(cfg.SOLVER.DEVICE)
    num_data, num_classes = DATASET_SHAPES.get(cfg.DATASET.TYPE, (50000, 100))
    teacher = _teacher_factory(cfg, num_classes)
    run_dir = tempfile.mkdtemp(prefix="mdistiller_bench_")

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_role_model(cfg, "STUDENT", num_classes)

    def subject(name: str, method_cfg: CN, cls) -> Subject:
        for stage in stages_of(cls.stages):
            # training costs the same with a stage's freshly initialised output (FreeKD's prompts) as with a learned one
            method_cfg = with_values(method_cfg, stage.stand_in(method_cfg, teacher(), run_dir))
        distiller = cls(student(), None if cls is distiller_dict["NONE"] else teacher(), method_cfg,
                        num_data=num_data, num_classes=num_classes)
        return Subject(name, method_cfg, distiller, num_data, num_classes, run_dir)

    base = subject("student_only", with_values(cfg, {"DISTILLER.TYPE": "NONE"}), distiller_dict["NONE"])
    floor = subject("floor", cfg, TeacherFloor)
    record = {
        "device": str(device),
        "batch_size": cfg.SOLVER.BATCH_SIZE,
        "image_size": cfg.DATASET.IMAGE_SIZE,
        "teacher": cfg.DISTILLER.TEACHER,
        "student": cfg.DISTILLER.STUDENT,
        "settings": run_settings(base.trainer, cfg),
        "iters": iters,
        "load_average_before": list(os.getloadavg()),
        "methods": {},
    }
    for method in methods:
        method_cfg = with_values(cfg, {"DISTILLER.TYPE": method})
        try:
            measured = subject(method, method_cfg, distiller_dict[method])
            turns = [base, floor, measured]
            if variants and method == cfg.DISTILLER.TYPE:
                turns += [subject(name, with_values(method_cfg, keys), distiller_dict[method]) for name, keys in variants.items()]
            window = measure_in_turns(turns, iters, warmup)
        except Exception as err:  # one method failing must not hide the others' numbers
            record["methods"][method] = failure(err)
            continue
        entry = measured.summary()
        entry.update(overheads(window, method))
        if len(turns) > 3:
            entry["variants"] = {}
            for variant in turns[3:]:
                summary = variant.summary()
                summary["speedup"] = entry["img_per_s"] / summary["img_per_s"]
                entry["variants"][variant.name] = summary
        record["methods"][method] = entry
        del measured, turns
    record["student_only"] = base.summary()
    record["floor"] = floor.summary()
    record["load_average_after"] = list(os.getloadavg())
    main = record["methods"].get(cfg.DISTILLER.TYPE)
    if main is not None and "error" not in main:
        record["distiller"] = main
        record["overhead_vs_floor"] = main["overhead_vs_floor"]
        record["overhead_vs_student"] = main["overhead_vs_student"]
    return record


def _cifar_like(images: np.ndarray, targets: List[int], transform):
    """A torchvision CIFAR-100 object over in-memory arrays (its own __getitem__: PIL + transform)."""
    from torchvision.datasets import CIFAR100

    dataset = CIFAR100.__new__(CIFAR100)
    dataset.data, dataset.targets = images, targets
    dataset.transform, dataset.target_transform = transform, None
    return dataset


def loader_throughput(cfg: CN, batches: int = 100) -> Dict[str, Dict[str, float]]:
    """Images/s of the CIFAR-100 training loader: DATASET.FAST_AUG's in-memory batched augmentation
    (on the configured device) against torchvision's PIL pipeline with DATASET.NUM_WORKERS workers.

    Uses the real CIFAR-100 under DATASET.ROOT when present, else 50,000 random uint8 images.
    """
    from mdistiller.dataset import InstanceDataset, build_loaders
    from mdistiller.dataset.cifar100 import build_cifar100, cifar100_train_transform, cifar100_val_transform
    from mdistiller.engine.fast_path import place_loader
    from mdistiller.errors import DatasetNotFoundError

    try:
        train_set, val_set, _ = build_cifar100(cfg)
        source = "CIFAR-100"
    except DatasetNotFoundError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
        targets = rng.integers(0, 100, 50000).tolist()
        train_set = InstanceDataset(_cifar_like(images, targets, cifar100_train_transform()))
        val_set = _cifar_like(images[:100], targets[:100], cifar100_val_transform())
        source = "random uint8 images"
    device = resolve_device(cfg.SOLVER.DEVICE)
    results: Dict[str, Dict[str, float]] = {}
    for name, fast in (("fast_aug", True), ("torchvision", False)):
        loader_cfg = with_values(cfg, {"DATASET.FAST_AUG": fast, "DATASET.TYPE": "cifar100"})
        loader, _ = build_loaders(loader_cfg, train_set, val_set)
        loader = place_loader(loader, device)
        iterator = iter(loader)
        next(iterator)  # workers started, first batch out
        start, images = time.perf_counter(), 0
        for _, batch in zip(range(batches), iterator):
            image = batch[0].to(device, non_blocking=True)
            images += image.shape[0]
        _synchronize(device)
        seconds = time.perf_counter() - start
        results[name] = {"img_per_s": images / seconds, "workers": 0 if fast else int(cfg.DATASET.NUM_WORKERS)}
        del iterator, loader
    results["speedup"] = results["fast_aug"]["img_per_s"] / results["torchvision"]["img_per_s"]
    results["source"] = source
    return results
