"""Builders: the only code that reads the config to make models and distillers."""

import os
from typing import Optional

import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.distillers import Distiller, distiller_dict
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError
from mdistiller.models import models_for


def check_names(cfg: CN) -> None:
    """UnknownNameError for an unknown distiller, student or teacher name, before any data is read."""
    distiller_dict.get(cfg.DISTILLER.TYPE)
    models = [cfg.DISTILLER.STUDENT] + ([cfg.DISTILLER.TEACHER] if cfg.DISTILLER.TYPE != "NONE" else [])
    for name in models:
        models_for(cfg.DATASET.TYPE).get(name, f" for dataset '{cfg.DATASET.TYPE}'")


def build_model(name: str, dataset: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A freshly initialised (or, for ImageNet with `pretrained`, torchvision-weighted) model."""
    constructor = models_for(dataset).get(name, f" for dataset '{dataset}'")
    if dataset == "imagenet":
        return constructor(pretrained=pretrained)
    return constructor(num_classes=num_classes)


def teacher_checkpoint_path(cfg: CN) -> Optional[str]:
    """DISTILLER.TEACHER_WEIGHTS when set, else the standard path of the model dict."""
    if cfg.DISTILLER.TEACHER_WEIGHTS:
        return cfg.DISTILLER.TEACHER_WEIGHTS
    return models_for(cfg.DATASET.TYPE).checkpoint(cfg.DISTILLER.TEACHER)


def build_teacher(cfg: CN, num_classes: int) -> nn.Module:
    """The teacher with its trained weights: from TEACHER_WEIGHTS / the standard path, or torchvision."""
    name, dataset = cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE
    if dataset == "imagenet" and not cfg.DISTILLER.TEACHER_WEIGHTS:
        return build_model(name, dataset, num_classes, pretrained=True)
    teacher = build_model(name, dataset, num_classes)
    path = teacher_checkpoint_path(cfg)
    if not path or not os.path.isfile(path):
        where = f"at {path}" if path else "(the model registers no standard path)"
        raise CheckpointError(
            f"Teacher checkpoint for {name} not found {where}: see download_ckpts/README.md, "
            "or set DISTILLER.TEACHER_WEIGHTS to a trained checkpoint."
        )
    load_weights(teacher, student_state_dict(load_checkpoint(path)), f"Teacher checkpoint {path}")
    return teacher


def build_distiller(cfg: CN, num_data: int, num_classes: int, teacher_weights: bool = True) -> Distiller:
    """Student, teacher (unless DISTILLER.TYPE is NONE) and the configured distiller around them.

    `teacher_weights=False` leaves the teacher freshly initialised, for callers that load a full
    distiller checkpoint (which holds the teacher) right after.
    """
    cls = distiller_dict[cfg.DISTILLER.TYPE]
    student = build_model(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE, num_classes)
    if cfg.DISTILLER.TYPE == "NONE":
        teacher = None
    elif teacher_weights:
        teacher = build_teacher(cfg, num_classes)
    else:
        teacher = build_model(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE, num_classes)
    return cls(student, teacher, cfg, num_data=num_data, num_classes=num_classes)


def predicts_through_distiller(distiller_type: str) -> bool:
    """True when the method's `forward_test` is not the bare student (e.g. SFAKD's teacher head)."""
    return distiller_dict[distiller_type].forward_test is not Distiller.forward_test


