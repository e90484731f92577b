"""Stage 1 of the prompt-based methods (FreeKD): learn frequency prompts inside the frozen teacher.

Each distilled teacher feature F (the last ``NUM_STAGES`` entries of ``feats``) is replaced, through
a hook (:mod:`mdistiller.distillers._feature_hook`), by ``IDWT(sum_t M_t * bands(F))`` from its
:class:`~mdistiller.frequency.prompt.FrequencyPrompt`. Only the prompts learn, with the teacher's
cross-entropy plus ``DIVERSITY_WEIGHT`` times the diversity of the masks, for ``PROMPT_EPOCHS``
epochs of the configured dataset (AdamW at ``PROMPT_LR``, cosine schedule, no weight decay), by the
ordinary :class:`~mdistiller.engine.trainer.Trainer` (logs, metrics, autocast, validation: the
accuracy it reports is the prompted teacher's). The prompt file is written atomically after every
epoch; its run directory (metrics, logs) is the file's path without the extension.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.distillers._feature_hook import locate_features, replace_feature
from mdistiller.distillers._prompts import (build_prompts, check_section, distilled_indices, prompt_path,
                                            prompt_record)
from mdistiller.distillers._shapes import feature_shapes
from mdistiller.engine.build import build_teacher
from mdistiller.engine.checkpoint import save_checkpoint
from mdistiller.engine.distributed import (barrier, local_device, mean_over_processes, process_group,
                                           shard_loaders)
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.trainer import Trainer
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device, seed_everything
from mdistiller.errors import ConfigError

__all__ = ["PromptTrainer", "PromptedTeacher", "learn_prompts", "prompt_learning_cfg", "prompt_run", "run_prompt_trainer"]


class PromptedTeacher(nn.Module):
    """The frozen teacher with a frequency prompt plugged into each of the features ``indices``.

    Trained like a distiller: ``forward(image=, target=)`` returns ``(logits, {"loss_ce", "loss_div"})``
    in training mode and the logits in eval mode; only the prompts are learnable.
    """

    def __init__(self, teacher: nn.Module, prompts: nn.ModuleList, indices: Sequence[int], image_size: int,
                 diversity: str = "dice", diversity_weight: float = 1.0) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.prompts = prompts
        self.diversity_kind = diversity
        self.diversity_weight = diversity_weight
        self._masks: Dict[int, List[Tensor]] = {}
        sites = locate_features(teacher, indices, image_size)
        self._handles = [replace_feature(teacher, site, self._prompt_hook(k)) for k, site in enumerate(sites)]

    def _prompt_hook(self, k: int):
        def apply(feature: Tensor) -> Tensor:
            prompted, masks = self.prompts[k](feature)
            self._masks[k] = masks
            return prompted

        return apply

    def train(self, mode: bool = True) -> "PromptedTeacher":
        super().train(mode)
        self.teacher.eval()
        return self

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return list(self.prompts.parameters())

    def forward(self, image: Tensor, target: Optional[Tensor] = None, **batch):
        self._masks = {}
        logits, _ = self.teacher(image)
        if not self.training:
            return logits
        diversity = sum(self.prompts[k].diversity(masks, self.diversity_kind) for k, masks in self._masks.items())
        return logits, {"loss_ce": F.cross_entropy(logits, target), "loss_div": self.diversity_weight * diversity}


class PromptTrainer(Trainer):
    """The trainer, saving the prompt file (instead of model checkpoints) after every epoch."""

    def __init__(self, experiment_name: str, model: PromptedTeacher, train_loader, val_loader, cfg: CN,
                 run_dir: str, path: str, name: str, indices: Sequence[int], teacher_top1: float) -> None:
        super().__init__(experiment_name, model, train_loader, val_loader, cfg, run_dir=run_dir)
        self.path, self.name, self.indices, self.teacher_top1 = path, name, list(indices), teacher_top1
        self.last_acc = -1.0

    def save(self, epoch: int, test_acc: float) -> None:
        """Rank 0 writes the prompt file; every process waits for it (stage 2 reads it next)."""
        model = self.distiller
        if self.is_main:
            record = prompt_record(model.prompts, model.teacher, self.cfg, self.name, self.indices, epoch=epoch,
                                   prompted_top1=test_acc, teacher_top1=self.teacher_top1)
            save_checkpoint(record, self.path)
        barrier()
        self.last_acc = test_acc


def prompt_learning_cfg(cfg: CN, name: str) -> CN:
    """`cfg` with the solver of stage 1: PROMPT_EPOCHS of AdamW at PROMPT_LR, cosine, no decay, no warm-up."""
    section = cfg[name]
    check_section(section, name)
    if section.PROMPT_EPOCHS < 1:
        raise ConfigError(f"{name}.PROMPT_EPOCHS must be at least 1, got {section.PROMPT_EPOCHS}.")
    stage = cfg.clone()
    stage.defrost()
    stage.SOLVER.EPOCHS = section.PROMPT_EPOCHS
    stage.SOLVER.TYPE = "AdamW"
    stage.SOLVER.LR = section.PROMPT_LR
    stage.SOLVER.WEIGHT_DECAY = 0.0
    stage.SOLVER.LR_SCHEDULER = "cosine"
    stage.SOLVER.WARMUP_EPOCHS = 0
    stage.freeze()
    return stage


def prompt_run(cfg: CN, name: str) -> Tuple[str, str, str]:
    """Stage 1's prompt file, run directory (the file's path without extension) and experiment name."""
    path = prompt_path(cfg, name)
    run_dir = os.path.splitext(path)[0]
    return path, run_dir, os.path.join(cfg.EXPERIMENT.PROJECT, "prompts", os.path.basename(run_dir))


def learn_prompts(cfg: CN, name: str, verbose: bool = True) -> str:
    """Stage 1 for the method whose config section is `name`; returns the prompt file's path."""
    if name not in cfg or "PROMPT_PATH" not in cfg[name]:
        raise ConfigError(f"DISTILLER.TYPE {name} does not use frequency prompts (its config section has no "
                          "PROMPT_PATH); use the config of a prompt-based method such as FREEKD.")
    stage_cfg = prompt_learning_cfg(cfg, name)
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)):
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
        train_loader, val_loader, _, num_classes = get_dataset(stage_cfg)
        train_loader, val_loader = shard_loaders(train_loader, val_loader, cfg.EXPERIMENT.SEED)
        return _learn_prompts(cfg, stage_cfg, name, train_loader, val_loader, num_classes, verbose)


def _learn_prompts(cfg: CN, stage_cfg: CN, name: str, train_loader, val_loader, num_classes: int,
                   verbose: bool) -> str:
    section = cfg[name]
    device = local_device(resolve_device(cfg.SOLVER.DEVICE))
    teacher = build_teacher(cfg, num_classes).to(device).eval()
    dtype = autocast_dtype(device, cfg.SOLVER)
    teacher_top1 = mean_over_processes(evaluate(lambda image: teacher(image)[0], val_loader, device,
                                                lambda: autocast_context(device, dtype)), val_loader)[0]
    image_size = cfg.DATASET.IMAGE_SIZE
    shapes = [s[1:] for s in feature_shapes(teacher, image_size)["feats"]]
    indices = distilled_indices(len(shapes), section.NUM_STAGES, name)
    prompts = build_prompts([shapes[i][0] for i in indices], section)
    model = PromptedTeacher(teacher, prompts, indices, image_size, section.DIVERSITY, section.DIVERSITY_WEIGHT)

    trainer = run_prompt_trainer(PromptTrainer, cfg, stage_cfg, name, model, train_loader, val_loader, indices,
                                 teacher_top1, "top-1", verbose)
    if verbose:
        print(f"Teacher top-1 with the learned prompts {trainer.last_acc:.2f} (without {teacher_top1:.2f}).")
    return trainer.path


def run_prompt_trainer(trainer_cls, cfg: CN, stage_cfg: CN, name: str, model: nn.Module, train_loader, val_loader,
                       indices: Sequence[int], teacher_score: float, metric: str, verbose: bool = True) -> Trainer:
    """Stage 1's training of `model`'s prompts by `trainer_cls` (a PromptTrainer); returns the trainer."""
    path, run_dir, experiment = prompt_run(cfg, name)
    trainer = trainer_cls(experiment, model, train_loader, val_loader, stage_cfg, run_dir, path, name, indices,
                          teacher_score)
    section = cfg[name]
    if verbose:
        print(f"== {name} stage 1: prompts for {cfg.DISTILLER.TEACHER} maps {list(indices)} "
              f"(channels {[p.channels for p in model.prompts]}, T={section.TOKENS}, {section.DWT_LEVELS} DWT "
              f"levels), {section.PROMPT_EPOCHS} epochs; teacher {metric} without prompts {teacher_score:.2f}")
    trainer.train()
    return trainer
