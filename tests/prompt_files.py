"""Prompt files for stage-2 tests, written as stage 1 would (random prompts for the given teacher)."""

import os
from typing import List

import torch
from torch import nn

from mdistiller.distillers._prompts import build_prompts, distilled_indices, prompt_path, prompt_record
from mdistiller.distillers._shapes import feature_shapes


def write_prompt_file(cfg, teacher: nn.Module, seed: int = 0) -> nn.ModuleList:
    """Random prompts for `cfg`'s method and `teacher`, saved where stage 2 looks; returns them."""
    method = cfg.DISTILLER.TYPE
    shapes = feature_shapes(teacher, cfg.DATASET.IMAGE_SIZE)["feats"]
    indices: List[int] = distilled_indices(len(shapes), cfg[method].NUM_STAGES, method)
    torch.manual_seed(seed)
    prompts = build_prompts([shapes[i][1] for i in indices], cfg[method])
    path = prompt_path(cfg, method)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(prompt_record(prompts, teacher, cfg, method, indices), path)
    return prompts
