"""Builders: the only code that reads the config to make models and distillers."""

import os
from typing import Optional

import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.distillers import Distiller, distiller_dict
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, UnknownNameError
from mdistiller.models import cifar_model_dict, imagenet_model_dict, tiny_imagenet_model_dict

MODEL_DICT_OF_DATASET = {
    "cifar100": cifar_model_dict,
    "digits": cifar_model_dict,
    "tiny_imagenet": tiny_imagenet_model_dict,
}


def _lookup(model_dict, name: str, dataset: str):
    if name not in model_dict:
        raise UnknownNameError(
            f"Unknown model '{name}' for dataset '{dataset}'. Known: {', '.join(sorted(model_dict))}."
        )
    return model_dict[name]


def _model_dict(dataset: str):
    return imagenet_model_dict if dataset == "imagenet" else MODEL_DICT_OF_DATASET.get(dataset, cifar_model_dict)


def check_names(cfg: CN) -> None:
    """UnknownNameError for an unknown distiller, student or teacher name, before any data is read."""
    distiller_dict.get(cfg.DISTILLER.TYPE)
    models = [cfg.DISTILLER.STUDENT] + ([cfg.DISTILLER.TEACHER] if cfg.DISTILLER.TYPE != "NONE" else [])
    for name in models:
        _lookup(_model_dict(cfg.DATASET.TYPE), name, cfg.DATASET.TYPE)


def build_model(name: str, dataset: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A freshly initialised (or, for ImageNet with `pretrained`, torchvision-weighted) model."""
    if dataset == "imagenet":
        return _lookup(imagenet_model_dict, name, dataset)(pretrained=pretrained)
    constructor, _ = _lookup(_model_dict(dataset), name, dataset)
    return constructor(num_classes=num_classes)


def teacher_checkpoint_path(cfg: CN) -> Optional[str]:
    """DISTILLER.TEACHER_WEIGHTS when set, else the standard path of the model dict."""
    if cfg.DISTILLER.TEACHER_WEIGHTS:
        return cfg.DISTILLER.TEACHER_WEIGHTS
    return _lookup(_model_dict(cfg.DATASET.TYPE), cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE)[1]


def build_teacher(cfg: CN, num_classes: int) -> nn.Module:
    """The teacher with its trained weights: from TEACHER_WEIGHTS / the standard path, or torchvision."""
    name, dataset = cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE
    if dataset == "imagenet" and not cfg.DISTILLER.TEACHER_WEIGHTS:
        return build_model(name, dataset, num_classes, pretrained=True)
    teacher = build_model(name, dataset, num_classes)
    path = teacher_checkpoint_path(cfg)
    if not path or not os.path.isfile(path):
        where = f"at {path}" if path else "(the model dict has no standard path)"
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


