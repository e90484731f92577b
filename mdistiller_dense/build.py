"""Builders of a dense run: the only code here that reads the config to make models and distillers."""

from typing import Tuple

from yacs.config import CfgNode as CN

from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.distillers import DenseDistiller, dense_distiller_dict
from mdistiller.errors import ConfigError
from mdistiller.registry import Registry
from mdistiller_dense.models import DETECTORS, build_dense_model, load_model_weights, parse_model_name
from mdistiller_dense.sam.distillers import sam_distiller_dict
from mdistiller_dense.sam.models import is_sam_model

__all__ = ["build_dense_teacher", "build_dense_distiller", "build_dense_run", "dense_methods"]


def build_dense_teacher(cfg: CN, num_classes: int, weights: bool = True):
    """The teacher (BatchNorm frozen in detectors) with DISTILLER.TEACHER_WEIGHTS loaded."""
    name = cfg.DISTILLER.TEACHER
    detector = parse_model_name(name)[0] in DETECTORS
    teacher = build_dense_model(name, num_classes, cfg.MODEL, frozen_bn=True if detector else None, teacher=True)
    if weights:
        load_model_weights(teacher, cfg.DISTILLER.TEACHER_WEIGHTS, f"Teacher {name}")
    return teacher


def build_dense_distiller(cfg: CN, num_classes: int, teacher_weights: bool = True) -> DenseDistiller:
    """Student (with its backbone weights), teacher unless DISTILLER.TYPE is NONE, and the distiller.

    ``teacher_weights=False`` leaves the teacher uninitialised, for callers that load a full
    checkpoint (which holds the teacher) right after.
    """
    cls = dense_distiller_dict[cfg.DISTILLER.TYPE]
    student = build_dense_model(cfg.DISTILLER.STUDENT, num_classes, cfg.MODEL, cfg.DISTILLER.STUDENT_BACKBONE_WEIGHTS)
    teacher = None if cfg.DISTILLER.TYPE == "NONE" else build_dense_teacher(cfg, num_classes, teacher_weights)
    return cls(student, teacher, cfg, num_classes=num_classes)


def dense_methods(cfg: CN) -> Registry:
    """The methods of the student's task: the SAM ones (mdistiller_dense/sam/) for a SAM student."""
    if not is_sam_model(cfg.DISTILLER.STUDENT):
        return dense_distiller_dict
    if cfg.SOLVER.TRAINER != "sam":
        raise ConfigError("SAM models train with SOLVER.TRAINER sam (configs/shapes/sam_*.yaml).")
    return sam_distiller_dict


def build_dense_run(cfg: CN) -> Tuple[object, object, DenseDistiller]:
    """Loaders and distiller of a run (the `build` of :func:`mdistiller.engine.run.train_run`)."""
    if is_sam_model(cfg.DISTILLER.STUDENT):
        from mdistiller_dense.sam.build import build_sam_run

        return build_sam_run(cfg)
    train_loader, val_loader, num_classes = build_dense_loaders(cfg)
    return train_loader, val_loader, build_dense_distiller(cfg, num_classes)
