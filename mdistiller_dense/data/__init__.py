"""Dense data: COCO-format detection, image + label-map segmentation, SA-1B's layout (Segment
Anything models), the generated shapes set (written in all three)."""

import os
from typing import Tuple

from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError
from mdistiller_dense.data.coco import CocoDetection, detection_collate
from mdistiller_dense.data.sa1b import SA1BFolder, ensure_sa1b, sam_collate
from mdistiller_dense.data.segmentation import SegmentationFolder
from mdistiller_dense.data.shapes import CATEGORIES, ShapesSpec, ensure_shapes, generate_shapes
from mdistiller_dense.models import task_of
from mdistiller_dense.sam.models import is_sam_model

__all__ = ["build_dense_datasets", "build_dense_loaders", "dataset_paths", "segmentation_classes", "shapes_spec",
           "CocoDetection", "SA1BFolder", "SegmentationFolder", "ShapesSpec", "generate_shapes", "ensure_shapes",
           "detection_collate"]

DATASET_TYPES = ("coco", "segmentation", "sa1b", "shapes")


def shapes_spec(cfg: CN) -> ShapesSpec:
    d = cfg.DATASET
    return ShapesSpec(num_train=d.NUM_TRAIN or 200, num_val=d.NUM_VAL or 50, image_size=d.SHAPES.IMAGE_SIZE,
                      max_objects=d.SHAPES.MAX_OBJECTS, min_object_size=d.SHAPES.MIN_OBJECT_SIZE,
                      max_object_size=d.SHAPES.MAX_OBJECT_SIZE, seed=d.SHAPES.SEED)


def dataset_paths(cfg: CN) -> dict:
    """Absolute-or-relative paths of the train / val images, annotations and masks."""
    d = cfg.DATASET
    if d.TYPE not in DATASET_TYPES:
        raise ConfigError(f"DATASET.TYPE must be one of {', '.join(DATASET_TYPES)}, got '{d.TYPE}'.")
    if d.TYPE == "shapes":
        root = ensure_shapes(d.ROOT, shapes_spec(cfg))
        return {f"{split}_{kind}": os.path.join(root, *parts)
                for split in ("train", "val")
                for kind, parts in (("images", (split, "images")), ("masks", (split, "masks")),
                                    ("annotations", ("annotations", f"instances_{split}.json")))}
    join = lambda p: os.path.join(d.ROOT, p)  # noqa: E731
    return {"train_images": join(d.TRAIN_IMAGES), "train_annotations": join(d.TRAIN_ANNOTATIONS),
            "train_masks": join(d.TRAIN_MASKS), "val_images": join(d.VAL_IMAGES),
            "val_annotations": join(d.VAL_ANNOTATIONS), "val_masks": join(d.VAL_MASKS)}


def sam_datasets(cfg: CN) -> Tuple[Dataset, Dataset, int]:
    """SA-1B-layout train / val sets for a SAM student: DATASET.ROOT / TRAIN_IMAGES and VAL_IMAGES
    (folders of sa_*/ shards), or the shapes set's copy in that layout; one "class" (masks)."""
    d = cfg.DATASET
    if d.TYPE not in ("sa1b", "shapes"):
        raise ConfigError(f"SAM models read SA-1B-layout data: DATASET.TYPE sa1b or shapes, got '{d.TYPE}'.")
    if d.TYPE == "shapes":
        root = ensure_sa1b(ensure_shapes(d.ROOT, shapes_spec(cfg)))
        train_dir, val_dir, limit = os.path.join(root, "train"), os.path.join(root, "val"), (0, 0)
    else:
        train_dir, val_dir = os.path.join(d.ROOT, d.TRAIN_IMAGES), os.path.join(d.ROOT, d.VAL_IMAGES)
        limit = (d.NUM_TRAIN, d.NUM_VAL)
    size, masks = cfg.SAM.IMAGE_SIZE, cfg.SAM.MASKS_PER_IMAGE
    return (SA1BFolder(train_dir, size, True, masks, limit[0]), SA1BFolder(val_dir, size, False, masks, limit[1]), 1)


def segmentation_classes(cfg: CN) -> int:
    """Classes of the label maps: background + the shapes' categories, or DATASET.NUM_CLASSES."""
    num_classes = len(CATEGORIES) + 1 if cfg.DATASET.TYPE == "shapes" else cfg.DATASET.NUM_CLASSES
    if num_classes < 2:
        raise ConfigError("Set DATASET.NUM_CLASSES to the number of classes in the label maps (Cityscapes: 19).")
    return num_classes


def build_dense_datasets(cfg: CN) -> Tuple[Dataset, Dataset, int]:
    """Train and val datasets for the student's task, and the number of classes the model predicts."""
    d = cfg.DATASET
    if is_sam_model(cfg.DISTILLER.STUDENT):
        return sam_datasets(cfg)
    if d.TYPE == "sa1b":
        raise ConfigError("DATASET.TYPE sa1b is for SAM models (sam_vit_b/l/h, sam_vit_mini, sam_tinyvit_5m).")
    paths = dataset_paths(cfg)
    limit = (d.NUM_TRAIN, d.NUM_VAL) if d.TYPE != "shapes" else (0, 0)
    if task_of(cfg.DISTILLER.STUDENT) == "detection":
        if d.TYPE == "segmentation":
            raise ConfigError("A detector needs COCO-format data: DATASET.TYPE coco or shapes.")
        train = CocoDetection(paths["train_images"], paths["train_annotations"], True, d.FLIP_PROB, limit[0])
        val = CocoDetection(paths["val_images"], paths["val_annotations"], False, 0.0, limit[1])
        return train, val, train.num_classes
    if d.TYPE == "coco":
        raise ConfigError("A segmenter needs image + label-map folders: DATASET.TYPE segmentation or shapes.")
    num_classes = segmentation_classes(cfg)
    suffixes = (".png", ".png") if d.TYPE == "shapes" else (d.IMAGE_SUFFIX, d.MASK_SUFFIX)
    train = SegmentationFolder(paths["train_images"], paths["train_masks"], *suffixes, train=True,
                               flip_prob=d.FLIP_PROB, scale_range=d.SCALE_RANGE, crop_size=d.CROP_SIZE,
                               ignore_index=d.IGNORE_INDEX, num_images=limit[0])
    val = SegmentationFolder(paths["val_images"], paths["val_masks"], *suffixes, ignore_index=d.IGNORE_INDEX,
                             num_images=limit[1])
    return train, val, num_classes


def build_dense_loaders(cfg: CN) -> Tuple[DataLoader, DataLoader, int]:
    """Loaders of :func:`build_dense_datasets`; detection batches are lists (images differ in size)."""
    train, val, num_classes = build_dense_datasets(cfg)
    detection = isinstance(train, CocoDetection)
    collate = detection_collate if detection else sam_collate if isinstance(train, SA1BFolder) else None
    workers = cfg.DATASET.NUM_WORKERS
    common = dict(num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
    train_loader = DataLoader(train, batch_size=cfg.SOLVER.BATCH_SIZE, shuffle=True, drop_last=len(train) >
                              cfg.SOLVER.BATCH_SIZE, **common)
    val_loader = DataLoader(val, batch_size=cfg.DATASET.TEST.BATCH_SIZE, shuffle=False, **common)
    return train_loader, val_loader, num_classes
