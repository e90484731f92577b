"""FreeKD stage 1 on a detector or segmenter: frequency prompts learned inside the frozen teacher
through the task's own losses (the detector's classification / box losses, the segmenter's CE).

The teacher's distilled maps (the last FREEKD.NUM_STAGES captured maps: by default every FPN
level, or ``backbone.layer4``) are replaced, through forward hooks, by ``IDWT(sum_t M_t * bands)``
of their prompt (:class:`mdistiller.frequency.prompt.FrequencyPrompt`); only the prompts learn, with
the task loss plus ``DIVERSITY_WEIGHT`` times the masks' diversity. Detectors run in training mode
(their BatchNorm is frozen, so nothing but the prompts changes) to return their losses. The solver,
prompt file and its checks are those of classification's stage 1
(:mod:`mdistiller.engine.prompt_learning`, :mod:`mdistiller.distillers.frequency_prompts`); the validation
AP / mIoU it logs is the prompted teacher's. Dense FREEKD declares it as its ``"DENSE_PROMPTS"`` stage
(:class:`DensePromptStage`), which the engine runs before training when the prompt file is missing.
"""

import os
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers.frequency_prompts import build_prompts, distilled_indices, prompt_record
from mdistiller.engine.checkpoint import save_checkpoint
from mdistiller.engine.distributed import local_device, process_group, shard_loaders
from mdistiller.engine.prompt_learning import PromptStage, PromptTrainer, prompt_learning_cfg, run_prompt_trainer
from mdistiller.engine.stages import stage_dict
from mdistiller.engine.utils import resolve_device, seed_everything
from mdistiller_dense.build import build_dense_teacher
from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.hooks import as_levels, default_feature_modules
from mdistiller_dense.models import DETECTORS, parse_model_name
from mdistiller_dense.trainer import DenseTrainer, dense_evaluate

__all__ = ["DensePromptStage", "PromptedDenseTeacher", "DensePromptTrainer", "initial_dense_prompts",
           "learn_dense_prompts"]


def _rebuild(output, levels: List[Tensor]):
    """``levels`` put back into the structure of a module's ``output`` (tensor, dict, list, tuple)."""
    if isinstance(output, dict):
        return OrderedDict(zip(output.keys(), levels))
    if isinstance(output, (list, tuple)):
        return type(output)(levels)
    return levels[0]


class PromptedDenseTeacher(nn.Module):
    """The frozen teacher with a prompt on each distilled map, trained like a dense distiller.

    ``forward(image=, target=)`` gives ``(None, {task losses, "loss_div"})`` in training mode and
    the teacher's predictions (through the prompts) in eval mode.
    """

    def __init__(self, teacher: nn.Module, kind: str, module_names: Sequence[str], prompts: nn.ModuleList,
                 indices: Sequence[int], diversity: str = "dice", diversity_weight: float = 1.0,
                 ignore_index: int = 255, num_classes: int = 0) -> None:
        super().__init__()
        self.teacher = teacher.requires_grad_(False)
        self.prompts = prompts
        self.detection = kind in DETECTORS
        self.ignore_index, self.num_classes = ignore_index, num_classes
        self.diversity_kind, self.diversity_weight = diversity, diversity_weight
        self.prompt_of = {level: k for k, level in enumerate(indices)}
        self._masks: Dict[int, List[Tensor]] = {}
        modules = dict(teacher.named_modules())
        offset = 0
        self._handles = []
        for name, count in zip(module_names, self._level_counts(module_names)):
            self._handles.append(modules[name].register_forward_hook(self._replace(offset)))
            offset += count

    @torch.no_grad()
    def _level_counts(self, names: Sequence[str]) -> List[int]:
        from mdistiller_dense.hooks import FeatureCapture

        capture = FeatureCapture(self.teacher, names)
        try:
            self.teacher.eval()
            self.teacher.backbone(torch.zeros(1, 3, 64, 64))
            return [len(as_levels([output])) for output in capture.pop()]
        finally:
            capture.remove()

    def _replace(self, offset: int):
        def hook(module: nn.Module, args, output):
            levels = as_levels([output])
            for i, level in enumerate(levels):
                k = self.prompt_of.get(offset + i)
                if k is not None:
                    prompted, masks = self.prompts[k](level)
                    self._masks[k] = masks
                    levels[i] = prompted.to(level.dtype)
            return _rebuild(output, levels)

        return hook

    def train(self, mode: bool = True) -> "PromptedDenseTeacher":
        super().train(mode)
        self.teacher.train(mode and self.detection)  # detectors need train mode for losses; BN is frozen
        return self

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return list(self.prompts.parameters())

    def forward(self, image, target=None, **batch):
        self._masks = {}
        if not self.training:
            out = self.teacher(image)
            return out if self.detection else out["out"]
        if self.detection:
            losses = {name if name.startswith("loss_") else f"loss_{name}": value
                      for name, value in self.teacher(image, target).items()}
        else:
            out = self.teacher(image)["out"]
            losses = {"loss_seg": F.cross_entropy(out.float(), target, ignore_index=self.ignore_index)}
        diversity = sum(self.prompts[k].diversity(masks, self.diversity_kind) for k, masks in self._masks.items())
        losses["loss_div"] = self.diversity_weight * diversity
        return None, losses


class DensePromptTrainer(PromptTrainer, DenseTrainer):
    """Classification's prompt trainer (prompt file after every epoch) with the dense batches and metrics."""


def initial_dense_prompts(cfg: CN, teacher: nn.Module, name: str) -> Tuple[List[str], nn.ModuleList, List[int]]:
    """The teacher's feature modules, freshly initialised prompts for the distilled ones, their indices."""
    from mdistiller_dense.distillers._base import level_channels

    kind, _ = parse_model_name(cfg.DISTILLER.TEACHER)
    names = list(cfg.DISTILLER.TEACHER_FEATURES) or default_feature_modules(kind)
    channels = level_channels(teacher, names)
    indices = distilled_indices(len(channels), cfg[name].NUM_STAGES, name, first=0)
    return names, build_prompts([channels[i] for i in indices], cfg[name]), indices


def learn_dense_prompts(cfg: CN, name: str = "FREEKD", verbose: bool = True, resume: bool = False) -> str:
    """Stage 1 for the dense config ``cfg``; returns the prompt file's path (`resume`: continue from
    the stage's ``latest`` checkpoint when there is one)."""
    stage_cfg = prompt_learning_cfg(cfg, name)
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)):
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
        train_loader, val_loader, num_classes = build_dense_loaders(stage_cfg)
        train_loader, val_loader = shard_loaders(train_loader, val_loader, cfg.EXPERIMENT.SEED)
        return _learn_dense_prompts(cfg, stage_cfg, name, train_loader, val_loader, num_classes, verbose, resume)


def _learn_dense_prompts(cfg: CN, stage_cfg: CN, name: str, train_loader, val_loader, num_classes: int,
                         verbose: bool, resume: bool) -> str:
    section = cfg[name]
    kind, _ = parse_model_name(cfg.DISTILLER.TEACHER)
    teacher = build_dense_teacher(cfg, num_classes)
    names, prompts, indices = initial_dense_prompts(cfg, teacher, name)
    device = local_device(resolve_device(cfg.SOLVER.DEVICE))
    plain = dense_evaluate(_Unprompted(teacher, kind in DETECTORS, cfg.DATASET.IGNORE_INDEX, num_classes).to(device),
                           val_loader, device)
    teacher_score = 100.0 * plain.get("ap", plain.get("miou", 0.0))
    model = PromptedDenseTeacher(teacher.cpu(), kind, names, prompts, indices, section.DIVERSITY,
                                 section.DIVERSITY_WEIGHT, cfg.DATASET.IGNORE_INDEX, num_classes)
    metric = "AP" if kind in DETECTORS else "mIoU"
    return run_prompt_trainer(DensePromptTrainer, cfg, stage_cfg, name, model, train_loader, val_loader, indices,
                              teacher_score, metric, verbose, resume).path


@stage_dict.register("DENSE_PROMPTS")
class DensePromptStage(PromptStage):
    """The ``"PROMPTS"`` stage (same prompt file, checks and solver) with the dense teacher's own loss:
    :func:`learn_dense_prompts`."""

    def learn(self, cfg: CN, resume: bool, verbose: bool) -> str:
        return learn_dense_prompts(cfg, cfg.DISTILLER.TYPE, verbose, resume)

    def stand_in(self, cfg: CN, teacher: nn.Module, directory: str) -> Dict[str, str]:
        """Freshly initialised prompts written under `directory` (stage 2 costs the same with them)."""
        name = cfg.DISTILLER.TYPE
        _, prompts, indices = initial_dense_prompts(cfg, teacher, name)
        path = os.path.join(directory, f"{name.lower()}_dense_prompts.pth")
        save_checkpoint(prompt_record(prompts, teacher, cfg, name, indices), path)
        return {f"{name}.PROMPT_PATH": path}


class _Unprompted(nn.Module):
    """The bare teacher in the shape :func:`dense_evaluate` expects (its score before stage 1)."""

    def __init__(self, teacher: nn.Module, detection: bool, ignore_index: int, num_classes: int) -> None:
        super().__init__()
        self.teacher, self.detection, self.ignore_index, self.num_classes = teacher, detection, ignore_index, num_classes

    def forward(self, image):
        out = self.teacher(image)
        return out if self.detection else out["out"]
