"""Prompt files for stage-2 tests: written as stage 1 starts them (fresh prompts for the given teacher), or
learned by stage 1 on one batch."""

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mdistiller.distillers.frequency_prompts import distilled_indices, load_prompts, prompt_path
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.engine.prompt_learning import initial_prompt_file, train_prompts


def write_prompt_file(cfg, teacher: nn.Module, seed: int = 0) -> nn.ModuleList:
    """Fresh prompts (seeded) for `cfg`'s method and `teacher`, saved where stage 2 looks; returns them."""
    torch.manual_seed(seed)
    initial_prompt_file(cfg, teacher)
    method = cfg.DISTILLER.TYPE
    shapes = feature_shapes(teacher, cfg.DATASET.IMAGE_SIZE)["feats"]
    indices = distilled_indices(len(shapes), cfg[method].NUM_STAGES, method)
    return load_prompts(cfg, method, teacher, indices, [shapes[i][1] for i in indices])


def learn_prompt_file(cfg, teacher: nn.Module, image: torch.Tensor, target: torch.Tensor) -> dict:
    """Stage 1 for real on one in-memory batch: fresh prompts plugged into a copy of `teacher` and
    trained by the engine's PromptTrainer for ``<method>.PROMPT_EPOCHS``, which writes the prompt file
    where stage 2 looks; returns the file's record."""
    loader = DataLoader(TensorDataset(image, target), batch_size=len(image))
    train_prompts(cfg, cfg.DISTILLER.TYPE, copy.deepcopy(teacher), loader, loader, teacher_top1=0.0, verbose=False)
    return torch.load(prompt_path(cfg, cfg.DISTILLER.TYPE), weights_only=True)
