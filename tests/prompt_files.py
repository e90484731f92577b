"""Prompt files for stage-2 tests, written as stage 1 starts them (fresh prompts for the given teacher)."""

import torch
from torch import nn

from mdistiller.distillers.frequency_prompts import distilled_indices, load_prompts
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.engine.prompt_learning import initial_prompt_file


def write_prompt_file(cfg, teacher: nn.Module, seed: int = 0) -> nn.ModuleList:
    """Fresh prompts (seeded) for `cfg`'s method and `teacher`, saved where stage 2 looks; returns them."""
    torch.manual_seed(seed)
    initial_prompt_file(cfg, teacher)
    method = cfg.DISTILLER.TYPE
    shapes = feature_shapes(teacher, cfg.DATASET.IMAGE_SIZE)["feats"]
    indices = distilled_indices(len(shapes), cfg[method].NUM_STAGES, method)
    return load_prompts(cfg, method, teacher, indices, [shapes[i][1] for i in indices])
