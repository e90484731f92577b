"""The teacher paid once: its outputs cached on disk and read by the trainer (TEACHER_CACHE.*).

A frozen teacher gives the same outputs for the same input, so a run need not compute them again
if it can name its inputs. Two ways to name them (docs/teacher_cache.md):

- ``views`` (:class:`ViewCache`): the in-memory fast augmentation (mdistiller/dataset/fast_aug.py)
  draws each training image as one of a finite set of views (CIFAR-100: 9 x 9 crop offsets x 2
  flips = 162). The teacher's outputs for every view of every image are computed once into
  memory-mapped arrays ``<name>.npy`` of shape (images * views, width) and read per batch at
  ``index * views + view``. Built in checksummed shards of TEACHER_CACHE.SHARD_IMAGES images: an
  interrupted build resumes at the first missing shard, a shard whose bytes changed is rebuilt,
  and under torchrun the shards are split over the processes, which all read the same files.
- ``replay`` (:class:`ReplayCache`): for any other augmentation (RandomResizedCrop, RandAugment,
  mixup), the first run of a seed records per step the teacher's outputs (its TEACHER_CACHE.TOPK
  largest logits, or all) beside a fingerprint of the batch; a later run with the same seed and
  data pipeline reads them, and a step whose batch differs from the record runs the teacher.

Both live in ``<TEACHER_CACHE.DIR or LOG.PREFIX/teacher_cache>/<digest>``: the digest covers
everything the outputs depend on (the teacher's weights; for views the padded training images and
their labels, so the dataset, its split and fraction and the image size; the augmentation's
normalisation and view set; the stored outputs, the storage dtype, autocast, channels_last and
the BN-folded fast teacher), so a stale cache is never read, and the runs of a sweep over student
or loss settings share one. With DTYPE float32 a cached run reproduces the online run: the outputs
come from the same teacher call under the same autocast and are handed back in the dtype the
teacher produced.

What a method reads from the teacher it declares in ``teacher_outputs`` (mdistiller/distillers/_base.py):
logits and the pre-logit vector are cached; a method that reads feature maps is refused. Once a
run's outputs all come from the cache the teacher leaves the training device (:func:`free_teacher`).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.dataset.fast_aug import InMemoryLoader
from mdistiller.engine.distributed import barrier, is_main_process, rank, world_size
from mdistiller.errors import ConfigError

__all__ = ["CACHE_FORMAT", "ReplayCache", "ViewCache", "cache_bytes", "cache_root", "check_cacheable",
           "free_teacher", "human_bytes", "teacher_cache_for_run", "view_cache_for_run"]

CACHE_FORMAT = 1
MODES = ("off", "views", "replay")
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Cached output -> where a model returns it: the logits, or the feature dict's key.
FEATURE_KEYS = {"pre_logits": "pooled_feat"}
# Top-k replay: the logits left out are set this far below the smallest kept one, so that
# softmax(t / T) is 0 on them in float32 for any T >= 0.01 (exp(-1e4 / 100) underflows no further).
TOPK_FILL_MARGIN = 1e4

Outputs = Dict[str, Tensor]
TeacherOutput = Tuple[Tensor, Dict[str, Tensor]]


# -- sizes, places, digests ------------------------------------------------------------------------
def cache_bytes(rows: int, widths: Dict[str, int], dtype: str) -> int:
    """Bytes of a cache of `rows` (images x views) rows of the outputs `widths` in `dtype`."""
    return rows * sum(widths.values()) * np.dtype(STORAGE_DTYPES[dtype]).itemsize


def storage_dtype(dtype: str) -> str:
    """TEACHER_CACHE.DTYPE checked: float16 or float32."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"TEACHER_CACHE.DTYPE must be float16 or float32, got {dtype!r}.")
    return dtype


def human_bytes(size: int) -> str:
    """`size` in GB above 1e9 bytes, else MB (decimal units, as disks are sold)."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def cache_root(cfg: CN) -> str:
    """The directory caches go under: TEACHER_CACHE.DIR, or LOG.PREFIX/teacher_cache."""
    return cfg.TEACHER_CACHE.DIR or os.path.join(cfg.LOG.PREFIX, "teacher_cache")


def _tensor_bytes(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


class Digest:
    """SHA-256 over named parts: plain JSON values and tensors (dtype, shape and bytes)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def add(self, name: str, value) -> None:
        self.hash.update(name.encode())
        if isinstance(value, Tensor):
            self.hash.update(f"{value.dtype}{tuple(value.shape)}".encode())
            self.hash.update(_tensor_bytes(value))
        else:
            self.hash.update(json.dumps(value, sort_keys=True, default=str).encode())

    def add_module(self, name: str, module: nn.Module) -> None:
        for key, tensor in module.state_dict().items():
            self.add(f"{name}.{key}", tensor)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()[:20]


def _file_checksum(arrays: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def _write_json(path: str, obj: dict) -> None:
    """`obj` as JSON at `path`, atomically (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """An exclusive lock on `path` (created) for the block: two runs of a sweep building one cache
    take turns, the second then finds it built."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_disk_space(directory: str, needed: int, what: str) -> None:
    """ConfigError when the file system of `directory` has less than `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise ConfigError(f"{what} needs {human_bytes(needed)} but {directory} has {human_bytes(free)} free: free "
                          "space there or set TEACHER_CACHE.DIR to a larger disk.")


# -- what a method needs -----------------------------------------------------------------------------
def check_cacheable(distiller: nn.Module, cfg: CN) -> Tuple[str, ...]:
    """The outputs the method reads from the teacher (its `teacher_outputs`); ConfigError when it
    reads feature maps, which no cache holds (one view's last map of res32x4 is 164x its logits)."""
    mode, method = cfg.TEACHER_CACHE.MODE, cfg.DISTILLER.TYPE
    needs = tuple(distiller.teacher_outputs)
    if "maps" in needs:
        hint = getattr(distiller, "teacher_cache_hint", "")
        raise ConfigError(
            f"TEACHER_CACHE.MODE {mode}: {method} reads the teacher's feature maps, which are not cached (only "
            f"logits and the pre-logit vector are), so its teacher must run every step: "
            f"{hint + ', or ' if hint else ''}set TEACHER_CACHE.MODE off.")
    unknown = [name for name in needs if name not in ("logits", *FEATURE_KEYS)]
    if unknown:
        raise ConfigError(f"{method} declares teacher outputs {unknown}, which the cache does not know: "
                          "set TEACHER_CACHE.MODE off.")
    return needs


def teacher_call(distiller: nn.Module, autocast: Callable[[], ContextManager], needs: Sequence[str]):
    """A function images -> {output name: tensor}: the distiller's own `teacher_forward` (the fast
    BN-folded copy when installed) under the run's autocast, as a training step calls it."""

    def call(images: Tensor) -> Outputs:
        with autocast():
            logits, feats = distiller.teacher_forward(images)
        return {name: logits if name == "logits" else feats[FEATURE_KEYS[name]] for name in needs}

    return call


def as_teacher_output(outputs: Outputs) -> TeacherOutput:
    """Cached outputs in the form `teacher_forward` returns: ``(logits, {"pooled_feat": ...})``."""
    return outputs.get("logits"), {FEATURE_KEYS[name]: value for name, value in outputs.items() if name != "logits"}


def free_teacher(distiller: nn.Module) -> None:
    """Release the teacher's memory on the training device once every output comes from the cache:
    its fast inference copy is dropped and its tensors move to the host memory (checkpoints still
    hold them); the submodules the method calls itself (`teacher_modules_kept`) stay where they are.
    On a CPU run only the copy is freed."""
    teacher = distiller.teacher
    kept = {name: teacher.get_submodule(name) for name in distiller.teacher_modules_kept}
    places = {name: next(iter(module.parameters()), torch.empty(0)).device for name, module in kept.items()}
    teacher.to("cpu")
    for name, module in kept.items():
        module.to(places[name])
    distiller.inference_teacher = None


# -- views -------------------------------------------------------------------------------------------
class ViewCache:
    """The teacher's outputs for every (image, view), as memory-mapped arrays in `directory`.

    Files: ``meta.json`` (what the cache holds), ``<output>.npy`` of shape (images * views, width)
    in the storage dtype, and ``shards/<i>.json`` per finished shard with the SHA-256 of its rows
    (and the rank of the process that built it).
    """

    def __init__(self, directory: str, num_images: int, num_views: int, widths: Dict[str, int], dtype: str,
                 output_dtype: str, shard_images: int, describe: Optional[dict] = None) -> None:
        self.directory = directory
        self.num_images, self.num_views = num_images, num_views
        self.widths = dict(widths)
        self.dtype = storage_dtype(dtype)
        self.output_dtype = output_dtype
        self.shard_images = max(1, int(shard_images))
        self.describe = describe or {}
        self.arrays: Dict[str, np.ndarray] = {}

    # layout
    @property
    def meta(self) -> dict:
        return {"format": CACHE_FORMAT, "mode": "views", "images": self.num_images, "views": self.num_views,
                "widths": self.widths, "dtype": self.dtype, "output_dtype": self.output_dtype,
                "shard_images": self.shard_images, **self.describe}

    @property
    def rows(self) -> int:
        return self.num_images * self.num_views

    @property
    def nbytes(self) -> int:
        return cache_bytes(self.rows, self.widths, self.dtype)

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_images)

    def shard_rows(self, shard: int) -> Tuple[int, int]:
        """The rows [start, stop) of `shard`: its images' views."""
        start = shard * self.shard_images
        return start * self.num_views, min(self.num_images, start + self.shard_images) * self.num_views

    def array_path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.npy")

    def marker_path(self, shard: int) -> str:
        return os.path.join(self.directory, "shards", f"{shard}.json")

    def shard_checksum(self, shard: int) -> str:
        start, stop = self.shard_rows(shard)
        return _file_checksum([self.arrays[name][start:stop] for name in sorted(self.widths)])

    def done_shards(self) -> List[int]:
        return [i for i in range(self.num_shards) if os.path.isfile(self.marker_path(i))]

    @property
    def complete(self) -> bool:
        return len(self.done_shards()) == self.num_shards

    # opening, checking, creating
    def open(self, mode: str = "r") -> None:
        """Map the arrays (mode "r" to read, "r+" to build)."""
        self.arrays = {name: np.load(self.array_path(name), mmap_mode=mode) for name in self.widths}

    def _arrays_fit(self) -> bool:
        """Whether meta.json and every array are there with their full shape (not truncated)."""
        if _read_json(os.path.join(self.directory, "meta.json")) != self.meta:
            return False
        try:
            self.open("r")
        except (OSError, ValueError):
            return False
        return all(array.shape == (self.rows, self.widths[name]) and array.dtype == STORAGE_DTYPES[self.dtype]
                   for name, array in self.arrays.items())

    def _create(self) -> None:
        """Fresh empty arrays and no finished shard (after the disk space check)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        os.makedirs(os.path.join(self.directory, "shards"))
        check_disk_space(self.directory, self.nbytes, f"The teacher cache ({self.describe_size()})")
        for name, width in self.widths.items():
            np.lib.format.open_memmap(self.array_path(name), mode="w+", dtype=STORAGE_DTYPES[self.dtype],
                                      shape=(self.rows, width)).flush()
        _write_json(os.path.join(self.directory, "meta.json"), self.meta)

    def describe_size(self) -> str:
        outputs = " + ".join(f"{width} {name}" for name, width in self.widths.items())
        return (f"{self.num_images:,} images x {self.num_views} views x ({outputs}) {self.dtype} = "
                f"{human_bytes(self.nbytes)}")

    def prepare(self) -> None:
        """Make the directory ready to build into (one process): new arrays when they are missing
        or truncated; the markers of shards whose rows fail their checksum removed."""
        existed = os.path.isdir(self.directory)
        if not self._arrays_fit():
            if existed and os.listdir(self.directory):
                print(f"Teacher cache {self.directory} is truncated or incomplete: rebuilding it.")
            self._create()
            self.open("r")
            return
        bad = [shard for shard in self.done_shards()
               if (_read_json(self.marker_path(shard)) or {}).get("sha256") != self.shard_checksum(shard)]
        for shard in bad:
            os.unlink(self.marker_path(shard))
        if bad:
            print(f"Teacher cache {self.directory}: shard(s) {', '.join(map(str, bad))} fail their checksum "
                  "(corrupt): rebuilding them.")

    # building
    def build(self, render: Callable[[Tensor, Tensor], Tensor], teacher: Callable[[Tensor], Outputs],
              device: torch.device, batch_size: int, shards: Sequence[int], progress: bool = True) -> None:
        """Compute and write `shards` (each then checksummed and marked done).

        `render(index, view)` gives the augmented images (on `device`) and `teacher(images)` their
        outputs. Rows are computed in order, `batch_size` views at a time, never in a batch of one
        view where the shard has more (oneDNN's float32 convolution of one image rounds otherwise
        than in a batch: the cache would then differ from the online run in its last bits).
        """
        self.open("r+")
        total = sum(stop - start for start, stop in map(self.shard_rows, shards))
        bar = tqdm(total=total, desc="Teacher cache", unit="view", disable=not progress, dynamic_ncols=True)
        with torch.no_grad():
            for shard in shards:
                start, stop = self.shard_rows(shard)
                row = start
                while row < stop:
                    end = min(stop, row + batch_size)
                    if stop - end == 1:
                        end = stop
                    position = torch.arange(row, end, device=device)
                    outputs = teacher(render(position // self.num_views, position % self.num_views))
                    for name, value in outputs.items():
                        self.arrays[name][row:end] = value.float().cpu().numpy()
                    bar.update(end - row)
                    row = end
                for array in self.arrays.values():
                    array.flush()
                _write_json(self.marker_path(shard), {"sha256": self.shard_checksum(shard), "rank": rank()})
        bar.close()
        self.open("r")

    # reading
    def lookup(self, index: Tensor, view: Tensor) -> Outputs:
        """The cached outputs of images `index` in views `view`, on their device, in the teacher's dtype."""
        rows = (index * self.num_views + view).cpu().numpy()
        dtype = getattr(torch, self.output_dtype)
        return {name: torch.from_numpy(array[rows]).to(index.device, non_blocking=True).to(dtype)
                for name, array in self.arrays.items()}

    def batch_outputs(self, image: Tensor, extra: Dict[str, Tensor], epoch: int, step: int) -> Dict[str, Tensor]:
        """The step's keyword arguments with `teacher_output` from the cache (the batch's `view` taken out)."""
        extra = dict(extra)
        view = extra.pop("view")
        extra["teacher_output"] = as_teacher_output(self.lookup(extra["index"], view))
        return extra


def ensure_built(cache: ViewCache, build: Callable[[Sequence[int], bool], None]) -> None:
    """Have `cache` complete and checked on every process: rank 0 locks it against other runs and
    prepares it (truncation and checksums); the missing shards are built round-robin over the
    processes (`build(shards, progress)`); then every process maps the same files."""
    os.makedirs(os.path.dirname(cache.directory) or ".", exist_ok=True)
    lock = _exclusive(cache.directory + ".lock") if is_main_process() else contextlib.nullcontext()
    with lock:
        if is_main_process():
            cache.prepare()
        barrier()
        missing = [shard for shard in range(cache.num_shards) if not os.path.isfile(cache.marker_path(shard))]
        if missing and is_main_process():
            done = cache.num_shards - len(missing)
            resumed = f", resuming after {done} of {cache.num_shards} shards" if done else ""
            print(f"Building the teacher cache {cache.directory}: {cache.describe_size()}{resumed}.")
        mine = missing[rank()::world_size()]
        if mine:
            build(mine, is_main_process())
        barrier()
        if not cache.complete:
            raise ConfigError(f"Teacher cache {cache.directory} is incomplete after its build: put "
                              "TEACHER_CACHE.DIR on a file system every process sees.")
    cache.open("r")


def view_digest(distiller: nn.Module, loader: InMemoryLoader, needs: Sequence[str], cfg: CN,
                amp_dtype: Optional[torch.dtype], channels_last: bool) -> Digest:
    """What a views cache depends on (see the module docstring)."""
    digest = Digest()
    digest.add("format", CACHE_FORMAT)
    digest.add_module("teacher", distiller.teacher)
    digest.add("images", loader.images)
    digest.add("targets", loader.targets)
    digest.add("augmentation", repr(loader.augmentation))
    digest.add("views", [loader.view_count, list(loader.view_grid)])
    digest.add("outputs", list(needs))
    digest.add("dtype", cfg.TEACHER_CACHE.DTYPE)
    digest.add("autocast", str(amp_dtype))
    digest.add("channels_last", bool(channels_last))
    digest.add("fast_teacher", bool(cfg.SOLVER.FAST_TEACHER and distiller.fast_teacher))
    return digest


def view_cache_for_run(cfg: CN, distiller: nn.Module, loader, device: torch.device,
                       autocast: Callable[[], ContextManager], amp_dtype: Optional[torch.dtype],
                       channels_last: bool) -> ViewCache:
    """The built views cache of a run (built or completed here first): `distiller` prepared for
    `device` (its fast teacher installed) and `loader` the training InMemoryLoader placed there."""
    needs = check_cacheable(distiller, cfg)
    if not isinstance(loader, InMemoryLoader):
        raise ConfigError(
            "TEACHER_CACHE.MODE views needs the in-memory fast augmentation (DATASET.FAST_AUG True with a crop / "
            "flip / normalise transform: CIFAR-100, the digits); for other augmentation use TEACHER_CACHE.MODE replay.")
    if cfg.MIXUP.ALPHA > 0 or cfg.MIXUP.CUTMIX > 0:
        raise ConfigError("TEACHER_CACHE.MODE views: mixup / cutmix shows the teacher mixed images, which are no "
                          "view of one image; use TEACHER_CACHE.MODE replay.")
    if not loader.with_index:
        raise ConfigError("TEACHER_CACHE.MODE views needs each sample's index in the batch (an InstanceDataset "
                          "training set, as the dataset builders give).")
    digest = view_digest(distiller, loader, needs, cfg, amp_dtype, channels_last).hexdigest()
    teacher = teacher_call(distiller, autocast, needs)
    probe = teacher(loader.apply(*[torch.zeros(2, dtype=torch.int64, device=device)] * 3, torch.zeros(
        2, dtype=torch.bool, device=device)))
    describe = {"teacher": cfg.DISTILLER.TEACHER, "dataset": cfg.DATASET.TYPE, "digest": digest}
    cache = ViewCache(os.path.join(cache_root(cfg), digest), int(loader.images.shape[0]), loader.view_count,
                      {name: int(value.shape[1]) for name, value in probe.items()}, cfg.TEACHER_CACHE.DTYPE,
                      str(probe["logits" if "logits" in probe else needs[0]].dtype).replace("torch.", ""),
                      cfg.TEACHER_CACHE.SHARD_IMAGES, describe)

    def render(index: Tensor, view: Tensor) -> Tensor:
        return loader.apply(index, *loader.view_draws(view))

    ensure_built(cache, lambda shards, progress: cache.build(render, teacher, device,
                                                             int(cfg.TEACHER_CACHE.BATCH_SIZE), shards,
                                                             progress and cfg.LOG.PROGRESS_BAR))
    loader.with_view = True
    return cache


# -- replay ------------------------------------------------------------------------------------------
class ReplayCache:
    """Per step of each epoch, the teacher's outputs as the first run of a seed recorded them.

    Files per epoch and process in ``<directory>/epoch_<E>.rank<R>/``: per-sample arrays of shape
    (steps, batch, width) — ``logits`` (the TOPK largest values, with their classes in
    ``logit_index``, or every logit when TOPK is 0) and ``pre_logits`` when the method reads it —,
    per-step arrays ``fingerprint`` (steps, 2: the batch's sum and an order-sensitive sum, float64)
    and ``count`` (steps, 1: the batch's size, 0 while not recorded), and ``done.json`` with their
    checksum once every step was recorded. An epoch without it is recorded (the rest of it, after an
    interruption) while the teacher runs online; one with it is read.
    """

    def __init__(self, directory: str, steps: int, batch_size: int, widths: Dict[str, int], topk: int,
                 dtype: str, output_dtype: torch.dtype, teacher: Callable[[Tensor], Outputs]) -> None:
        self.directory = directory
        self.steps, self.batch_size = steps, batch_size
        self.widths = dict(widths)
        self.topk = topk
        self.dtype = storage_dtype(dtype)
        self.output_dtype = output_dtype
        self.teacher = teacher
        self.epoch: Optional[int] = None
        self.recording = False
        self.arrays: Dict[str, np.ndarray] = {}
        self.warned = False

    def epoch_dir(self, epoch: int) -> str:
        return os.path.join(self.directory, f"epoch_{epoch}.rank{rank()}")

    def layout(self) -> Dict[str, Tuple[Tuple[int, ...], type]]:
        """Array name -> (shape, dtype) as stored."""
        storage = STORAGE_DTYPES[self.dtype]
        out: Dict[str, Tuple[Tuple[int, ...], type]] = {"fingerprint": ((self.steps, 2), np.float64),
                                                        "count": ((self.steps, 1), np.int64)}
        for name, width in self.widths.items():
            if name == "logits" and self.topk:
                out["logits"] = ((self.steps, self.batch_size, self.topk), storage)
                out["logit_index"] = ((self.steps, self.batch_size, self.topk), np.int32)
            else:
                out[name] = ((self.steps, self.batch_size, width), storage)
        return out

    def _checksum(self) -> str:
        return _file_checksum([self.arrays[name] for name in sorted(self.arrays)])

    def _map(self, where: str, mode: str) -> bool:
        """Map `where`'s arrays in `mode`; False when one is missing or of another shape."""
        try:
            self.arrays = {name: np.load(os.path.join(where, f"{name}.npy"), mmap_mode=mode)
                           for name in self.layout()}
        except (OSError, ValueError):
            return False
        return all(self.arrays[name].shape == shape and self.arrays[name].dtype == kind
                   for name, (shape, kind) in self.layout().items())

    def _open_epoch(self, epoch: int) -> None:
        """Map `epoch`'s arrays: to read when recorded whole and intact, else to record into."""
        self.epoch, where = epoch, self.epoch_dir(epoch)
        done = _read_json(os.path.join(where, "done.json"))
        if done is not None:
            if self._map(where, "r") and done == {"sha256": self._checksum()}:
                self.recording = False
                return
            print(f"Replay cache {where} fails its checksum (corrupt or truncated): recording epoch {epoch} again.")
            shutil.rmtree(where, ignore_errors=True)
        self.recording = True
        if os.path.isdir(where) and self._map(where, "r+"):
            return  # an epoch a stopped run recorded in part: the rest is recorded now
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where)
        layout = self.layout()
        size = sum(int(np.prod(shape)) * np.dtype(kind).itemsize for shape, kind in layout.values())
        check_disk_space(where, size, f"The replay cache's epoch {epoch} ({human_bytes(size)})")
        self.arrays = {name: np.lib.format.open_memmap(os.path.join(where, f"{name}.npy"), mode="w+", dtype=kind,
                                                       shape=shape) for name, (shape, kind) in layout.items()}

    @staticmethod
    def fingerprint(image: Tensor) -> Tensor:
        """Two float64 numbers that change with the batch's pixels and their order."""
        flat = image.detach().double().reshape(image.shape[0], -1)
        weights = torch.arange(1, flat.shape[0] + 1, dtype=torch.float64, device=flat.device)
        return torch.stack([flat.sum(), (flat[:, ::7].sum(1) * weights).sum()])

    def _record(self, step: int, image: Tensor, outputs: Outputs) -> None:
        n = image.shape[0]
        for name, value in outputs.items():
            value = value.float()
            if name == "logits" and self.topk:
                value, index = value.topk(self.topk, dim=1)
                self.arrays["logit_index"][step, :n] = index.cpu().numpy()
            self.arrays[name][step, :n] = value.cpu().numpy()
        self.arrays["fingerprint"][step] = self.fingerprint(image).cpu().numpy()
        self.arrays["count"][step] = n
        if step == self.steps - 1 and bool((self.arrays["count"] > 0).all()):
            for array in self.arrays.values():
                array.flush()
            _write_json(os.path.join(self.epoch_dir(self.epoch), "done.json"), {"sha256": self._checksum()})

    def _read(self, step: int, image: Tensor) -> Optional[Outputs]:
        n = image.shape[0]
        recorded = torch.from_numpy(np.array(self.arrays["fingerprint"][step]))
        if int(self.arrays["count"][step, 0]) != n or not torch.allclose(
                self.fingerprint(image).cpu(), recorded, rtol=1e-9, atol=1e-9):
            if not self.warned:
                print(f"Replay cache {self.directory}: the batch of epoch {self.epoch} step {step + 1} differs from "
                      "the recorded one (another data pipeline, or a resume without EXPERIMENT.DETERMINISTIC); "
                      "the teacher runs for such steps.")
                self.warned = True
            return None
        device, out = image.device, {}
        for name in self.widths:
            value = torch.from_numpy(np.array(self.arrays[name][step, :n])).to(device).float()
            if name == "logits" and self.topk:
                index = torch.from_numpy(np.array(self.arrays["logit_index"][step, :n])).to(device).long()
                floor = value.min(dim=1, keepdim=True).values - TOPK_FILL_MARGIN
                value = floor.expand(n, self.widths["logits"]).scatter(1, index, value)
            out[name] = value.to(self.output_dtype)
        return out

    def batch_outputs(self, image: Tensor, extra: Dict[str, Tensor], epoch: int, step: int) -> Dict[str, Tensor]:
        """The step's keyword arguments with `teacher_output`: read from the record of this epoch and
        step, or computed by the teacher (and recorded while the epoch is being recorded)."""
        if epoch != self.epoch:
            self._open_epoch(epoch)
        outputs = None if self.recording else self._read(step, image)
        if outputs is None:
            outputs = self.teacher(image)
            if self.recording:
                self._record(step, image, outputs)
        return dict(extra, teacher_output=as_teacher_output(outputs))


def replay_digest(distiller: nn.Module, cfg: CN, needs: Sequence[str], num_data: int, steps: int,
                  amp_dtype: Optional[torch.dtype], channels_last: bool) -> Digest:
    """What a replay record depends on: the teacher, and the settings that decide each step's batch."""
    digest = Digest()
    digest.add("format", CACHE_FORMAT)
    digest.add_module("teacher", distiller.teacher)
    data = {key: value for key, value in cfg.DATASET.items()
            if key not in ("NUM_WORKERS", "PIN_MEMORY", "PERSISTENT_WORKERS", "TEST", "DOWNLOAD")}
    digest.add("dataset", data)
    digest.add("mixup", dict(cfg.MIXUP))
    digest.add("batch", [cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.COMPILE, num_data, steps, world_size()])
    digest.add("seed", [cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC])
    digest.add("outputs", [list(needs), cfg.TEACHER_CACHE.TOPK, cfg.TEACHER_CACHE.DTYPE])
    digest.add("autocast", [str(amp_dtype), bool(channels_last), bool(cfg.SOLVER.FAST_TEACHER and distiller.fast_teacher)])
    return digest


def replay_cache_for_run(cfg: CN, distiller: nn.Module, loader, device: torch.device,
                         autocast: Callable[[], ContextManager], amp_dtype: Optional[torch.dtype],
                         channels_last: bool) -> ReplayCache:
    """The replay cache of a run (its epochs recorded as the run goes when not yet recorded)."""
    needs = check_cacheable(distiller, cfg)
    topk = int(cfg.TEACHER_CACHE.TOPK)
    if topk < 0:
        raise ConfigError(f"TEACHER_CACHE.TOPK must be 0 (all logits) or positive, got {topk}.")
    if topk and not distiller.topk_logits_suffice:
        raise ConfigError(f"TEACHER_CACHE.TOPK {topk}: {cfg.DISTILLER.TYPE} reads every teacher logit (only KD "
                          "without LOGIT_STAND reads them through softmax alone); set TEACHER_CACHE.TOPK 0.")
    steps = len(loader)
    digest = replay_digest(distiller, cfg, needs, len(loader.dataset), steps, amp_dtype, channels_last).hexdigest()
    teacher = teacher_call(distiller, autocast, needs)
    size = image_size(cfg)
    first = torch.zeros(2, 3, size, size, device=device)
    if channels_last:
        first = first.contiguous(memory_format=torch.channels_last)
    probe = teacher(first)
    widths = {name: int(value.shape[1]) for name, value in probe.items()}
    if topk >= widths.get("logits", topk + 1):
        topk = 0
    directory = os.path.join(cache_root(cfg), f"replay-{digest}")
    os.makedirs(directory, exist_ok=True)
    output_dtype = probe["logits" if "logits" in probe else needs[0]].dtype
    cache = ReplayCache(directory, steps, int(cfg.SOLVER.BATCH_SIZE), widths, topk, cfg.TEACHER_CACHE.DTYPE,
                        output_dtype, teacher)
    print(f"Replay cache {directory}: epochs recorded by a first run are read, others recorded as they train.")
    return cache


def teacher_cache_for_run(cfg: CN, distiller: nn.Module, loader, device: torch.device,
                          autocast: Callable[[], ContextManager], amp_dtype: Optional[torch.dtype],
                          channels_last: bool):
    """The run's teacher cache for TEACHER_CACHE.MODE (None when off or without a teacher), with the
    teacher freed from the device once the cache stands in for it (views)."""
    mode = cfg.TEACHER_CACHE.MODE if "TEACHER_CACHE" in cfg else "off"
    if mode not in MODES:
        raise ConfigError(f"TEACHER_CACHE.MODE must be one of {', '.join(MODES)}, got {mode!r}.")
    if mode == "off" or getattr(distiller, "teacher", None) is None or loader is None:
        return None
    if mode == "views":
        cache = view_cache_for_run(cfg, distiller, loader, device, autocast, amp_dtype, channels_last)
        free_teacher(distiller)
        return cache
    return replay_cache_for_run(cfg, distiller, loader, device, autocast, amp_dtype, channels_last)
