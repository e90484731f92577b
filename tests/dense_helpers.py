"""Small dense set-ups shared by the dense tests: a tiny shapes set, configs, a saved teacher."""

import os
from typing import Sequence

import torch

from mdistiller.distillers.frequency_prompts import build_prompts, prompt_path, prompt_record
from mdistiller.engine.checkpoint import save_checkpoint
from mdistiller_dense.build import build_dense_teacher
from mdistiller_dense.config import build_dense_cfg

SHAPES_OPTS = ["DATASET.TYPE", "shapes", "DATASET.NUM_TRAIN", "8", "DATASET.NUM_VAL", "4", "DATASET.NUM_WORKERS", "0",
               "DATASET.SHAPES.IMAGE_SIZE", "64", "DATASET.SHAPES.MIN_OBJECT_SIZE", "12",
               "DATASET.SHAPES.MAX_OBJECT_SIZE", "28", "MODEL.MIN_SIZE", "64", "MODEL.MAX_SIZE", "64",
               "SOLVER.BATCH_SIZE", "2", "DATASET.TEST.BATCH_SIZE", "4", "LOG.PROGRESS_BAR", "False",
               "SOLVER.AMP", "False"]


def dense_cfg(tmp_path, method: str, student: str = "fcos_resnet18_fpn", teacher: str = "fcos_resnet18_fpn",
              extra: Sequence[str] = ()):
    """A frozen dense config on a tiny shapes set under `tmp_path`, teacher weights at tmp_path/teacher.pth."""
    opts = SHAPES_OPTS + ["DATASET.ROOT", str(tmp_path / "data"), "LOG.PREFIX", str(tmp_path / "out"),
                          "DISTILLER.TYPE", method, "DISTILLER.STUDENT", student, "DISTILLER.TEACHER", teacher,
                          "DISTILLER.TEACHER_WEIGHTS", str(tmp_path / f"teacher_{teacher}.pth"), *extra]
    return build_dense_cfg(None, opts)


def save_teacher(cfg, num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised teacher saved where `cfg` looks for it (a student file of a NONE run)."""
    torch.manual_seed(seed)
    teacher = build_dense_teacher(cfg, num_classes, weights=False)
    save_checkpoint({"model": teacher.state_dict()}, cfg.DISTILLER.TEACHER_WEIGHTS)
    return teacher


def save_initial_prompts(cfg, teacher: torch.nn.Module, channels: Sequence[int], indices: Sequence[int],
                         name: str = "FREEKD") -> str:
    """Stage 1's starting prompts of method `name` written where stage 2 looks (stage 2 costs the same)."""
    prompts = build_prompts(list(channels), cfg[name])
    path = prompt_path(cfg, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(prompt_record(prompts, teacher, cfg, name, list(indices)), path)
    return path
