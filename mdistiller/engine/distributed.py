"""Training on several processes through torchrun (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node N tools/train.py --cfg ...`` starts N processes with RANK, LOCAL_RANK
and WORLD_SIZE in their environment; :func:`init_distributed` joins them into one process group
(NCCL on CUDA, gloo on the CPU; DISTRIBUTED.BACKEND overrides). Each process takes one device and a
1/N shard of every epoch (:class:`~torch.utils.data.DistributedSampler`, reshuffled per epoch by
``set_epoch``) and of the validation set (:class:`ShardSampler`); gradients are averaged by DDP,
metrics summed over processes (:func:`reduce_meters`, :func:`weighted_mean`). Rank 0 alone
prints, logs and writes checkpoints. SOLVER.BATCH_SIZE is per process (the global batch is N
times it); DISTRIBUTED.SCALE_LR multiplies SOLVER.LR by N (the linear scaling rule, Goyal et al.
2017); DISTRIBUTED.SYNC_BN converts the student's BatchNorm layers to SyncBatchNorm (CUDA only).
Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op.
"""

import builtins
import contextlib
import inspect
import os
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

__all__ = [
    "NullLog", "ShardSampler", "all_gather_objects", "average_gradients", "barrier", "broadcast_buffers",
    "cleanup_distributed", "init_distributed", "is_distributed", "is_main_process", "local_device",
    "max_each_over_processes", "max_over_processes", "max_over_processes_tensor", "mean_over_processes",
    "process_group", "rank", "reduce_meters", "set_sampler_epoch", "shard_loaders",
    "sum_over_processes", "world_size", "wrap_ddp",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, CUDA means this process's GPU (LOCAL_RANK); other devices are unchanged."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _silence_print() -> None:
    """Processes other than rank 0 print only with ``print(..., force=True)`` (as DeiT / MAE do)."""
    original = builtins.print
    if getattr(original, "silenced", False):
        return

    def print_on_main(*args, force: bool = False, **kwargs) -> None:
        if force:
            original(*args, **kwargs)

    print_on_main.silenced = True
    print_on_main.original = original
    builtins.print = print_on_main


def _restore_print() -> None:
    """Undo :func:`_silence_print` (after training: the process may go on, e.g. in a test or a notebook)."""
    builtins.print = getattr(builtins.print, "original", builtins.print)


def init_distributed(cfg: CN, device: torch.device) -> bool:
    """Join torchrun's process group when launched by it; returns whether training is distributed."""
    if not launched_by_torchrun():
        return False
    if cfg.DISTRIBUTED.SYNC_BN and device.type != "cuda":
        raise ConfigError("DISTRIBUTED.SYNC_BN needs CUDA (SyncBatchNorm has no CPU kernel); set it False.")
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    if not is_distributed():  # a caller may have joined a group already (another init_method)
        backend = cfg.DISTRIBUTED.BACKEND
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if not is_main_process():
        _silence_print()
    return True


@contextlib.contextmanager
def process_group(cfg: CN, device: torch.device) -> Iterator[bool]:
    """The block runs in torchrun's process group (joined here when launched by torchrun; yields
    whether distributed). A group the caller joined before is left as it is; one joined here is
    left after the block, on success after rank 0's last write (a barrier)."""
    joined_before = is_distributed()
    distributed = init_distributed(cfg, device)
    finished = False
    try:
        yield distributed
        finished = True
    finally:
        if distributed and not joined_before:
            cleanup_distributed(finished)
        elif distributed and finished:
            barrier()


def cleanup_distributed(finished: bool) -> None:
    """Leave the process group (after a normal finish, wait for rank 0's last checkpoint first) and
    give this process its print back."""
    _restore_print()
    if not is_distributed():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


# DDP without rank 0's buffers copied to every process before each forward: `forward_sync_buffers`
# in newer torch (buffers still synced once, at the wrap), `broadcast_buffers` (deprecated there) before.
_DDP_ARGUMENTS = inspect.signature(DistributedDataParallel.__init__).parameters
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGUMENTS
                          else {"broadcast_buffers": False})


def wrap_ddp(distiller: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """`distiller` inside DistributedDataParallel (the module itself when not distributed).

    With `sync_bn`, BatchNorm layers outside the teacher become SyncBatchNorm first (in place: the
    returned wrapper and `distiller` share their parameters and state_dict keys).

    Buffers are not copied from rank 0 before each forward (:data:`NO_FORWARD_BUFFER_SYNC`): each
    process keeps its own BatchNorm statistics during an epoch (validation copies rank 0's,
    :func:`broadcast_buffers`), and a buffer a method keeps equal on every process by itself (CRD's
    memory banks, updated from the embeddings of all processes) is not overwritten by rank 0's. Parameters that no loss term
    reaches must be frozen by the method, or the method sets `ddp_find_unused_parameters`.
    """
    if not is_distributed():
        return distiller
    if sync_bn:
        for name, child in list(distiller.named_children()):
            if name != "teacher":
                setattr(distiller, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return DistributedDataParallel(
        distiller,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(getattr(distiller, "ddp_find_unused_parameters", False)),
        **NO_FORWARD_BUFFER_SYNC,
    )


def average_gradients(grads: Sequence[Optional[torch.Tensor]]) -> None:
    """Replace each gradient by its mean over processes, in place, in one all-reduce (as DDP does).

    `None` entries (parameters without a gradient) are skipped; they must be the same on every
    process, which holds when every process runs the same model code.
    """
    if not is_distributed():
        return
    present = [g for g in grads if g is not None]
    if not present:
        return
    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in present:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_processes(values: Sequence[float]) -> List[float]:
    """Element-wise sums of `values` over all processes."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def max_each_over_processes(values: Sequence[float]) -> List[float]:
    """Element-wise maxima of `values` over all processes (flags: 1.0 on any process gives 1.0)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def max_over_processes_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maxima of `tensor` over all processes, reduced where the backend reduces (the
    GPU under NCCL: no host copy) and returned on `tensor`'s device; `tensor` on one process."""
    if not is_distributed():
        return tensor
    reduced = tensor.to(_reduce_device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced.to(tensor.device)


def max_over_processes(value: float) -> float:
    return max_each_over_processes([value])[0]


def all_gather_objects(obj: object) -> List[object]:
    """`obj` of every process, in rank order (picklable objects; `[obj]` on one process)."""
    if not is_distributed():
        return [obj]
    gathered: List[object] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait for every process (a no-op on one process)."""
    if is_distributed():
        dist.barrier()


def reduce_meters(meters: Dict[str, object]) -> None:
    """Sum every AverageMeter's `sum` and `count` over processes, in place (so `avg` is global)."""
    if not is_distributed():
        return
    names = sorted(meters)
    totals = sum_over_processes([v for name in names for v in (meters[name].sum, meters[name].count)])
    for i, name in enumerate(names):
        meters[name].sum, meters[name].count = totals[2 * i], int(round(totals[2 * i + 1]))


def mean_over_processes(values: Sequence[float], loader) -> List[float]:
    """Global averages from per-process averages `values` over each process's shard of `loader`."""
    if not is_distributed():
        return list(values)
    count = len(loader.sampler)
    totals = sum_over_processes([v * count for v in values] + [count])
    return [total / max(totals[-1], 1.0) for total in totals[:-1]]


def set_sampler_epoch(loader, epoch: int) -> None:
    """Tell a DistributedSampler which epoch starts, so each epoch has its own shuffle."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


class NullLog:
    """Stands for a logger on processes other than rank 0: every method call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def broadcast_buffers(distiller: nn.Module) -> None:
    """Copy rank 0's BatchNorm running statistics to every process (before validation).

    The teacher's too: a method that runs it in train mode (OFD) updates them from each process's
    shard. Other buffers (CRD's memory banks) are kept equal by their method, and the
    multi-process tests check that they are.
    """
    if not is_distributed():
        return
    norms = [m for m in distiller.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    device = _reduce_device()
    # A teacher the teacher cache moved to the host (mdistiller/engine/teacher_cache.py) is frozen: skipped.
    for buffer in (b for m in norms for b in m.buffers(recurse=False) if b.device.type == device.type):
        data = buffer.data.contiguous()
        dist.broadcast(data, src=0)
        if data.data_ptr() != buffer.data.data_ptr():
            buffer.data.copy_(data)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + N, rank + 2N, ...`` of a dataset of `length` items: the processes'
    shards cover it exactly once (no padding, unlike DistributedSampler), for evaluation."""

    def __init__(self, length: int, rank_: Optional[int] = None, world: Optional[int] = None) -> None:
        self.length = length
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


def _with_sampler(loader, sampler: Sampler):
    """`loader` drawing its items from `sampler` instead (a new DataLoader with the same settings)."""
    if not isinstance(loader, DataLoader):
        loader.sampler = sampler  # InMemoryLoader
        return loader
    if loader.batch_size is None:
        raise ConfigError("Cannot shard a loader built on a batch sampler across processes; "
                          "run this method on one process.")
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        persistent_workers=loader.persistent_workers, worker_init_fn=loader.worker_init_fn,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )


def shard_loaders(train_loader, val_loader, seed: int):
    """The loaders of one process: a DistributedSampler shard of the training set (shuffled with
    `seed` and the epoch) and a :class:`ShardSampler` shard of the validation set."""
    if not is_distributed():
        return train_loader, val_loader
    train_sampler = DistributedSampler(train_loader.dataset, shuffle=True, seed=seed, drop_last=False)
    return _with_sampler(train_loader, train_sampler), _with_sampler(val_loader, ShardSampler(len(val_loader.dataset)))
