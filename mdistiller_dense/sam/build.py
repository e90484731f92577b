"""Builders of a Segment Anything run: models with their weights, the stage-1 encoder file, the
teacher's embedding stores and the trained module of tools/train_dense.py."""

import os
from typing import Dict, Sequence, Tuple

import torch
from segment_anything.modeling import Sam
from torch.utils.data import DataLoader, Subset
from yacs.config import CfgNode as CN

from mdistiller.distillers.frequency_prompts import teacher_fingerprint
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, strip_prefix
from mdistiller.engine.distributed import barrier, rank, world_size
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device
from mdistiller.errors import CheckpointError
from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.sam.distillers import SamAlone, SamModule, sam_distiller_dict
from mdistiller_dense.sam.evaluation import encoder_throughput
from mdistiller_dense.sam.embeddings import EmbeddingStore, store_digest
from mdistiller_dense.sam.models import build_sam_model, encoder_parameters, load_sam_weights, sam_state_dict
from mdistiller_dense.sam.prompts import preprocess

__all__ = ["sam_table", "build_sam_distiller", "build_sam_run", "build_sam_teacher", "encoder_path", "load_encoder",
           "teacher_stores", "DECODER_PARTS"]

DECODER_PARTS = ("prompt_encoder.", "mask_decoder.")


def build_sam_teacher(cfg: CN, weights: bool = True) -> Sam:
    """DISTILLER.TEACHER at SAM.IMAGE_SIZE with DISTILLER.TEACHER_WEIGHTS (SAM's official file, or a
    student file of a NONE run), frozen."""
    teacher = build_sam_model(cfg.DISTILLER.TEACHER, cfg.SAM.IMAGE_SIZE)
    if weights:
        load_sam_weights(teacher, cfg.DISTILLER.TEACHER_WEIGHTS, f"Teacher {cfg.DISTILLER.TEACHER}")
    return teacher.eval().requires_grad_(False)


def encoder_path(cfg: CN) -> str:
    """SAM.ENCODER_PATH, or stage 1's file derived from the method, data, teacher, student and size."""
    if cfg.SAM.ENCODER_PATH:
        return cfg.SAM.ENCODER_PATH
    name = (f"{cfg.DISTILLER.TYPE.lower()}_{cfg.DATASET.TYPE}_{cfg.DISTILLER.TEACHER}_{cfg.DISTILLER.STUDENT}"
            f"_{cfg.SAM.IMAGE_SIZE}px.pth")
    return os.path.join(cfg.LOG.PREFIX, cfg.EXPERIMENT.PROJECT, "sam_encoders", name)


def load_encoder(student: Sam, path: str) -> Dict:
    """Stage 1's encoder file into ``student.image_encoder``; returns the file's record."""
    if not os.path.isfile(path):
        raise CheckpointError(f"No stage-1 encoder at {path}: run tools/train_dense.py with this config (it runs "
                              "stage 1 first) or set SAM.ENCODER_PATH.")
    record = load_checkpoint(path)
    if "encoder" not in record:
        raise CheckpointError(f"{path} is not a stage-1 encoder file (no 'encoder' entry).")
    load_weights(student.image_encoder, record["encoder"], f"Stage-1 encoder {path}")
    return record


def copy_decoder(student: Sam, spec: str) -> None:
    """The prompt encoder and mask decoder of the teacher's weights file into ``student`` (MobileSAM
    keeps SAM's decoder; stage 2 starts from it)."""
    if not spec or not os.path.isfile(spec):
        raise CheckpointError(f"Stage 2 starts from the teacher's mask decoder: DISTILLER.TEACHER_WEIGHTS "
                              f"'{spec}' is not a file.")
    weights = sam_state_dict(load_checkpoint(spec))
    for part in DECODER_PARTS:
        load_weights(getattr(student, part[:-1]), strip_prefix(weights, part), f"Teacher {part[:-1]} of {spec}")


def build_sam_distiller(cfg: CN) -> SamModule:
    """The module tools/train_dense.py trains: NONE a whole SAM; SAM_MSE / FREEKD stage 2 (the stage-1
    encoder loaded, the teacher's decoder copied in)."""
    cls = sam_distiller_dict.get(cfg.DISTILLER.TYPE)
    student = build_sam_model(cfg.DISTILLER.STUDENT, cfg.SAM.IMAGE_SIZE)
    if cfg.DISTILLER.TYPE != "NONE":
        load_encoder(student, encoder_path(cfg))
        copy_decoder(student, cfg.DISTILLER.TEACHER_WEIGHTS)
    return cls(student, None, cfg)


def build_sam_run(cfg: CN) -> Tuple[object, object, SamModule]:
    """Loaders and trained module of a SAM run (the `build` of :func:`mdistiller.engine.run.train_run`)."""
    train_loader, val_loader, _ = build_dense_loaders(cfg)
    return train_loader, val_loader, build_sam_distiller(cfg)


def teacher_stores(cfg: CN, teacher: Sam, loaders: Dict[str, DataLoader], device: torch.device
                   ) -> Dict[str, EmbeddingStore]:
    """Per split, the store of `teacher`'s embeddings of the loader's data set, filled: each process
    computes the missing ones of its share of the images (every world_size-th), then all wait."""
    base = cfg.SAM.EMBEDDING_DIR or os.path.join(cfg.LOG.PREFIX, cfg.EXPERIMENT.PROJECT, "sam_embeddings")
    fingerprint = teacher_fingerprint(teacher)
    teacher = teacher.to(device)
    dtype = autocast_dtype(device, cfg.SOLVER)

    def encode(images, sizes):
        with autocast_context(device, dtype):
            return teacher.image_encoder(preprocess(teacher, images, sizes)).float()

    stores = {}
    for split, loader in loaders.items():
        dataset = loader.dataset
        store = EmbeddingStore(base, store_digest(cfg.DISTILLER.TEACHER, fingerprint, cfg.SAM.IMAGE_SIZE,
                                                  dataset.root, dataset.files))
        share = Subset(dataset, list(range(rank(), len(dataset), world_size())))
        store.fill(DataLoader(share, batch_size=loader.batch_size, collate_fn=loader.collate_fn), encode, device)
        stores[split] = store
    barrier()
    return stores


def sam_table(cfg: CN, models: Sequence[Tuple[str, str]]) -> str:
    """MobileSAM's comparison of (model name, weights file) pairs on the config's validation set: box
    and point mIoU, image-encoder parameters and throughput (batch 1 at SAM.IMAGE_SIZE), as a table."""
    _, val_loader, _ = build_dense_loaders(cfg)
    device = resolve_device(cfg.SOLVER.DEVICE)
    dtype = autocast_dtype(device, cfg.SOLVER)
    autocast = lambda: autocast_context(device, dtype)  # noqa: E731
    lines = ["| model | weights | box mIoU | point mIoU | masks | encoder params (M) | encoder img/s |",
             "|---|---|---|---|---|---|---|"]
    for name, weights in models:
        model = build_sam_model(name, cfg.SAM.IMAGE_SIZE)
        load_sam_weights(model, weights, f"Model {name}")
        model = model.to(device).eval()
        scores = SamAlone(model, None, cfg).scores(val_loader, device, autocast)
        speed = encoder_throughput(model.image_encoder, cfg.SAM.IMAGE_SIZE, device, autocast=autocast)
        lines.append(f"| {name} | {weights} | {scores['box_miou']:.2f} | {scores['point_miou']:.2f} | "
                     f"{int(scores['masks'])} | {encoder_parameters(model) / 1e6:.2f} | {speed:.1f} |")
    return "\n".join(lines)
