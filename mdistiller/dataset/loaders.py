"""From a config to datasets and DataLoaders: :func:`build_datasets`, :func:`build_loaders`,
:func:`get_dataset` (MDistiller's entry point, both in one call).

When the method asks for ``"contrastive_index"`` in its ``batch_fields`` (CRD), the train set is
instance-sampled, as in MDistiller: items gain the ``CRD.NCE.K + 1`` contrastive indices (:class:`~mdistiller.dataset.contrastive.ContrastiveInstanceDataset`,
mode ``CRD.MODE``).
"""

import os
import signal
from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from yacs.config import CfgNode

from mdistiller.dataset.base import InstanceDataset, collate_readable, dataset_registry
from mdistiller.dataset.contrastive import ContrastiveInstanceDataset
from mdistiller.dataset.fast_aug import fast_loader
from mdistiller.dataset.subset import keep_items, stratified_indices

__all__ = ["build_datasets", "build_loaders", "contrastive_train_set", "get_dataset", "set_worker_signals"]

# MDistiller draws CRD negatives with replacement on these; on CIFAR-100 only when K exceeds the pool.
ALWAYS_REPLACE_NEGATIVES = ("imagenet", "tiny_imagenet")


def contrastive_train_set(cfg: CfgNode, train_set: Dataset) -> ContrastiveInstanceDataset:
    """The train set with CRD's contrastive indices (the builders' set, or the one it wraps)."""
    base = train_set.dataset if isinstance(train_set, InstanceDataset) else train_set
    return ContrastiveInstanceDataset(base, k=int(cfg.CRD.NCE.K), mode=cfg.CRD.MODE,
                                      always_replace=cfg.DATASET.TYPE in ALWAYS_REPLACE_NEGATIVES)


def quiet_exit(signum: int, frame) -> None:
    os._exit(0)


def set_worker_signals(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGINT (a Ctrl-C reaches the whole process group; the main
    process stops cleanly and ends its workers) and leave with status 0 on SIGTERM (sent by the
    main process to end a worker, or to every process by a scheduler: a status 0 keeps torch's
    SIGCHLD handler from failing the main process while it finishes its step and saves)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, quiet_exit)


def build_datasets(cfg: CfgNode, batch_fields: Optional[Sequence[str]] = None) -> Tuple[Dataset, Dataset, int]:
    """``(train_set, val_set, num_classes)`` for ``cfg.DATASET.TYPE``, its items carrying the
    per-sample data the method declares in `batch_fields` (the engine passes the distiller's;
    None, as MDistiller scripts call it: contrastive indices when DISTILLER.TYPE is CRD). With
    ``DATASET.TRAIN_FRACTION`` below 1 the train set is its stratified fraction drawn with
    ``EXPERIMENT.SEED`` (:mod:`mdistiller.dataset.subset`).

    Raises :class:`~mdistiller.errors.UnknownNameError` for an unregistered type and
    :class:`~mdistiller.errors.DatasetNotFoundError` when the data is not on disk.
    """
    train_set, val_set, num_classes = dataset_registry.get(cfg.DATASET.TYPE)(cfg)
    fraction = float(cfg.DATASET.get("TRAIN_FRACTION", 1.0))
    if fraction != 1.0:
        base = train_set.dataset if isinstance(train_set, InstanceDataset) else train_set
        keep_items(base, stratified_indices(base.targets, fraction, int(cfg.get("EXPERIMENT", {}).get("SEED", 0))))
    if batch_fields is None:
        batch_fields = ("contrastive_index",) if cfg.get("DISTILLER") and cfg.DISTILLER.get("TYPE") == "CRD" else ()
    if "contrastive_index" in batch_fields:
        train_set = contrastive_train_set(cfg, train_set)
    return train_set, val_set, num_classes


def build_loaders(
    cfg: CfgNode,
    train_set: Dataset,
    val_set: Dataset,
    train_sampler: Optional[Sampler] = None,
) -> Tuple[Iterable, Iterable]:
    """Train and validation loaders: train shuffled unless ``train_sampler`` is given (e.g. a
    ``DistributedSampler``), validation in order; batches of
    ``SOLVER.BATCH_SIZE`` and ``DATASET.TEST.BATCH_SIZE``; the last partial batch kept, except in
    training under ``SOLVER.COMPILE`` (its other batch size would compile the student again) or
    under mixup / cutmix (``MIXUP.*``: an odd last batch could not be paired).

    With ``DATASET.FAST_AUG`` (default on) a set held in memory (CIFAR-100, digits) whose transform
    is crop / flip / normalise gets an :class:`~mdistiller.dataset.fast_aug.InMemoryLoader`
    (batched augmentation, on the training device); other sets get a DataLoader with
    ``DATASET.NUM_WORKERS`` workers, persistent when ``DATASET.PERSISTENT_WORKERS`` (default on) and
    there are workers, pinned memory when ``DATASET.PIN_MEMORY`` ("auto": when CUDA is available).

    With ``EXPERIMENT.DETERMINISTIC`` workers are not persistent: each epoch starts them afresh,
    seeded from that epoch's seed, so a resumed run draws the same augmentations as an
    uninterrupted one. Workers ignore SIGINT / SIGTERM (:func:`set_worker_signals`); batches leave
    out images an ImageFolder could not read (:func:`~mdistiller.dataset.base.collate_readable`)."""
    dataset_cfg = cfg.DATASET
    num_workers = int(dataset_cfg.NUM_WORKERS)
    pin_memory = dataset_cfg.get("PIN_MEMORY", "auto")
    deterministic = bool(cfg.get("EXPERIMENT", {}).get("DETERMINISTIC", False))
    common = dict(
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory),
        persistent_workers=num_workers > 0 and bool(dataset_cfg.get("PERSISTENT_WORKERS", True)) and not deterministic,
        drop_last=False,
        collate_fn=collate_readable,
        worker_init_fn=set_worker_signals,
    )
    fast = bool(dataset_cfg.get("FAST_AUG", False))
    train_batch, val_batch = int(cfg.SOLVER.BATCH_SIZE), int(dataset_cfg.TEST.BATCH_SIZE)
    mixup = cfg.get("MIXUP")
    mixes = mixup is not None and (mixup.ALPHA > 0 or mixup.CUTMIX > 0)  # pairs need an even batch
    drop_last = bool(cfg.get("SOLVER", {}).get("COMPILE", False)) or mixes
    train_loader = fast_loader(train_set, train_batch, shuffle=True, sampler=train_sampler,
                               drop_last=drop_last) if fast else None
    if train_loader is None:
        train_loader = DataLoader(train_set, batch_size=train_batch, shuffle=train_sampler is None,
                                  sampler=train_sampler, **dict(common, drop_last=drop_last))
    val_loader = fast_loader(val_set, val_batch, shuffle=False) if fast else None
    if val_loader is None:
        val_loader = DataLoader(val_set, batch_size=val_batch, shuffle=False, **common)
    return train_loader, val_loader


def get_dataset(cfg: CfgNode, batch_fields: Optional[Sequence[str]] = None) -> Tuple[DataLoader, DataLoader, int, int]:
    """MDistiller's ``(train_loader, val_loader, num_data, num_classes)``; `batch_fields`: see
    :func:`build_datasets`."""
    train_set, val_set, num_classes = build_datasets(cfg, batch_fields)
    train_loader, val_loader = build_loaders(cfg, train_set, val_set)
    return train_loader, val_loader, len(train_set), num_classes
