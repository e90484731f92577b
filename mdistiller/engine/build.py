"""Builders: the only code that reads the config to make models and distillers."""

import inspect
import os
from typing import Any, Dict, Optional, Sequence

import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers import Distiller, distiller_dict
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.models import models_for
from mdistiller.models.external import TIMM_PREFIX, build_external_model, check_external_name, is_external_name
from mdistiller.models.pretrained import (TIMM_PRETRAINED, load_into, timm_state_dict, torchvision_state_dict,
                                          unwrap_state_dict)


# A zoo constructor's arguments the run sets itself (from the dataset, or for an ImageNet teacher).
RUN_ARGUMENTS = ("num_classes", "pretrained")


def check_names(cfg: CN) -> None:
    """UnknownNameError for an unknown distiller, student or teacher name, ConfigError for a zoo
    model's MODEL.*_KWARGS / *_FEATURES it cannot take; before any data is read."""
    distiller_dict.get(cfg.DISTILLER.TYPE)
    roles = ["STUDENT"] + (["TEACHER"] if cfg.DISTILLER.TYPE != "NONE" else [])
    for role in roles:
        if is_external_name(cfg.DISTILLER[role]):
            check_external_name(cfg.DISTILLER[role])
        else:
            zoo_kwargs(cfg, role)


def zoo_kwargs(cfg: CN, role: str) -> Dict[str, Any]:
    """MODEL.<role>_KWARGS for the zoo model DISTILLER.<role>: the keyword arguments its constructor
    takes. A ConfigError in one line for any other (``num_classes`` / ``pretrained`` are the run's),
    and for MODEL.<role>_FEATURES: a zoo model's taps are its stage outputs, the others are timm: /
    torchvision: models' (mdistiller/models/external.py)."""
    name, dataset = cfg.DISTILLER[role], cfg.DATASET.TYPE
    constructor = models_for(dataset).get(name, f" for dataset '{dataset}'")
    if cfg.MODEL[f"{role}_FEATURES"]:
        raise ConfigError(f"MODEL.{role}_FEATURES {list(cfg.MODEL[f'{role}_FEATURES'])}: the zoo model {name} gives its "
                          f"own stage outputs as feats; remove the key, or use a timm: / torchvision: model.")
    kwargs = _plain(cfg.MODEL[f"{role}_KWARGS"])
    parameters = inspect.signature(constructor).parameters.values()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    takes = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in RUN_ARGUMENTS]
    refused = [key for key in kwargs if key in RUN_ARGUMENTS or not (takes_any or key in takes)]
    if refused:
        offer = f"takes {', '.join(takes)}" if takes else "takes no constructor arguments"
        raise ConfigError(f"MODEL.{role}_KWARGS {', '.join(refused)}: the zoo model {name} {offer} (num_classes / "
                          f"pretrained are the run's); remove them, or use a timm: / torchvision: model.")
    return kwargs


def _plain(value: Any) -> Any:
    """A config value as a constructor takes it: sections to dicts, lists to tuples."""
    if isinstance(value, CN):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def build_model(name: str, dataset: str, num_classes: int, pretrained: bool = False, size: int = 0,
                kwargs: Optional[Dict[str, Any]] = None, feature_modules: Sequence[str] = ()) -> nn.Module:
    """A freshly initialised model with constructor `kwargs`: a zoo name (for ImageNet with
    `pretrained`, torchvision-weighted), or ``timm:<name>`` / ``torchvision:<name>`` with its taps at
    `size` px."""
    if is_external_name(name):
        return build_external_model(name, num_classes, size, kwargs, feature_modules)
    constructor = models_for(dataset).get(name, f" for dataset '{dataset}'")
    if dataset == "imagenet":
        return constructor(pretrained=pretrained, **(kwargs or {}))
    return constructor(num_classes=num_classes, **(kwargs or {}))


def build_role_model(cfg: CN, role: str, num_classes: int) -> nn.Module:
    """The freshly initialised ``STUDENT`` or ``TEACHER`` of `cfg`, with its MODEL.<role>_KWARGS and
    MODEL.<role>_FEATURES (timm: / torchvision: models; a zoo model takes or refuses them: :func:`zoo_kwargs`)."""
    name = cfg.DISTILLER[role]
    if not is_external_name(name):
        return build_model(name, cfg.DATASET.TYPE, num_classes, kwargs=zoo_kwargs(cfg, role))
    return build_model(name, cfg.DATASET.TYPE, num_classes, size=image_size(cfg),
                       kwargs=_plain(cfg.MODEL[f"{role}_KWARGS"]), feature_modules=list(cfg.MODEL[f"{role}_FEATURES"]))


def load_external_weights(model: nn.Module, spec: str, what: str, new_head: bool, num_classes: int) -> None:
    """Weights for an adapted timm: / torchvision: model: ``timm:pretrained``, ``torchvision:<Enum>.<NAME>``
    or a file (any usual checkpoint form, or .safetensors); see :mod:`mdistiller.models.pretrained`."""
    if spec == TIMM_PRETRAINED:
        if not model.name.startswith(TIMM_PREFIX):
            raise CheckpointError(f"{what}: timm:pretrained is for timm: models; {model.name} takes "
                                  "torchvision:<Enum>.<NAME> or a file.")
        weights = timm_state_dict(model.name[len(TIMM_PREFIX):])
    elif spec.startswith("torchvision:"):
        weights = torchvision_state_dict(spec)
    elif spec.endswith(".safetensors"):
        if not os.path.isfile(spec):
            raise CheckpointError(f"{what}: weights file {spec} not found.")
        from safetensors.torch import load_file

        weights = load_file(spec)
    else:
        weights = unwrap_state_dict(load_checkpoint(spec), spec)
    load_into(model.model, weights, f"{what} {spec}", new_head, num_classes)


def build_student(cfg: CN, num_classes: int) -> nn.Module:
    """The student, from DISTILLER.STUDENT_WEIGHTS when set (fine-tuning: a classifier of another
    size is left freshly initialised), else freshly initialised."""
    student = build_role_model(cfg, "STUDENT", num_classes)
    spec = cfg.DISTILLER.STUDENT_WEIGHTS
    if spec and is_external_name(cfg.DISTILLER.STUDENT):
        load_external_weights(student, spec, f"Student {cfg.DISTILLER.STUDENT}", True, num_classes)
    elif spec:
        load_weights(student, student_state_dict(load_checkpoint(spec)), f"Student checkpoint {spec}")
    return student


def teacher_checkpoint_path(cfg: CN) -> Optional[str]:
    """DISTILLER.TEACHER_WEIGHTS when set, else the standard path of the model dict (None for a
    timm: / torchvision: teacher, whose weights only TEACHER_WEIGHTS names)."""
    if cfg.DISTILLER.TEACHER_WEIGHTS:
        return cfg.DISTILLER.TEACHER_WEIGHTS
    if is_external_name(cfg.DISTILLER.TEACHER):
        return None
    return models_for(cfg.DATASET.TYPE).checkpoint(cfg.DISTILLER.TEACHER)


def build_teacher(cfg: CN, num_classes: int) -> nn.Module:
    """The teacher with its trained weights: from TEACHER_WEIGHTS / the standard path, or torchvision."""
    name, dataset = cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE
    if is_external_name(name):
        teacher = build_role_model(cfg, "TEACHER", num_classes)
        if not cfg.DISTILLER.TEACHER_WEIGHTS:
            raise CheckpointError(
                f"Teacher {name} needs DISTILLER.TEACHER_WEIGHTS: a checkpoint trained on {dataset} (fine-tune "
                "one with DISTILLER.TYPE NONE, as configs/cifar100/teachers/ do), or timm:pretrained / "
                "torchvision:<Enum>.<NAME> when its classes are the dataset's."
            )
        load_external_weights(teacher, cfg.DISTILLER.TEACHER_WEIGHTS, f"Teacher {name}", False, num_classes)
        return teacher
    if dataset == "imagenet" and not cfg.DISTILLER.TEACHER_WEIGHTS:
        return build_model(name, dataset, num_classes, pretrained=True, kwargs=zoo_kwargs(cfg, "TEACHER"))
    teacher = build_role_model(cfg, "TEACHER", num_classes)
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
    student = build_student(cfg, num_classes)
    if cfg.DISTILLER.TYPE == "NONE":
        teacher = None
    elif teacher_weights:
        teacher = build_teacher(cfg, num_classes)
    else:
        teacher = build_role_model(cfg, "TEACHER", num_classes)
    return cls(student, teacher, cfg, num_data=num_data, num_classes=num_classes)


def predicts_through_distiller(distiller_type: str) -> bool:
    """True when the method's `forward_test` is not the bare student (e.g. SFAKD's teacher head)."""
    return distiller_dict[distiller_type].forward_test is not Distiller.forward_test


