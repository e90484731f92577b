"""Stage 1 of the prompt-based methods (FreeKD): learn frequency prompts inside the frozen teacher.

The ``"PROMPTS"`` stage (:class:`PromptStage`) that FREEKD and AFPKD declare; the engine runs it
before their training when the prompt file is missing or unfinished, and ``tools/train_prompt.py``
runs it alone.

Each distilled teacher feature F (the last ``NUM_STAGES`` entries of ``feats``) is replaced, through
a hook (:mod:`mdistiller.engine.feature_hook`), by ``IDWT(sum_t M_t * bands(F))`` from its
:class:`~mdistiller.frequency.prompt.FrequencyPrompt`. In a token teacher (ViT, DeiT, Mixer, Swin's
NHWC stages) F is the grid of the tapped block's output: the hook prompts that grid and writes it back
into the model's stream, the class / distillation / register tokens unchanged. Only the prompts learn, with the teacher's
cross-entropy plus ``DIVERSITY_WEIGHT`` times the diversity of the masks, for ``PROMPT_EPOCHS``
epochs of the configured dataset (AdamW at ``PROMPT_LR``, cosine schedule, no weight decay), by the
ordinary :class:`~mdistiller.engine.trainer.Trainer` (logs, metrics, autocast, validation: the
accuracy it reports is the prompted teacher's). The prompt file is written atomically after every
epoch; its run directory (metrics, logs, the ``latest`` checkpoint a resumed stage continues from)
is the file's path without the extension.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.dataset.base import image_size
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.distillers.frequency_prompts import (build_prompts, check_section, distilled_indices, prompt_path,
                                                     prompt_record)
from mdistiller.engine.build import build_teacher
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.engine.distributed import (barrier, local_device, mean_over_processes, process_group,
                                           shard_loaders)
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.feature_hook import locate_features, replace_feature
from mdistiller.engine.stages import Stage, stage_dict
from mdistiller.engine.trainer import Trainer
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device, seed_everything
from mdistiller.errors import ConfigError

__all__ = ["PromptStage", "PromptTrainer", "PromptedTeacher", "fresh_prompts", "initial_prompt_file", "learn_prompts",
           "prompt_learning_cfg", "prompt_run", "run_prompt_trainer", "train_prompts"]


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
    """The trainer, saving the prompt file and the ``latest`` checkpoint (to resume the stage from)
    after every epoch, instead of the student checkpoints."""

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
            save_checkpoint(self.state(epoch), os.path.join(self.run_dir, "latest"))
        barrier()
        self.last_acc = test_acc


def prompt_learning_cfg(cfg: CN, name: str) -> CN:
    """`cfg` with the solver of stage 1: PROMPT_EPOCHS of AdamW at PROMPT_LR, cosine, no decay, no warm-up,
    none of the student's recipe (GRAD_CLIP, MIXUP, LABEL_SMOOTHING, EMA)."""
    section = cfg[name]
    check_section(section, name)
    if section.PROMPT_EPOCHS < 1:
        raise ConfigError(f"{name}.PROMPT_EPOCHS must be at least 1, got {section.PROMPT_EPOCHS}.")
    stage = cfg.clone()
    stage.defrost()
    stage.SOLVER.EPOCHS = section.PROMPT_EPOCHS
    if "ITERS" in stage.SOLVER:  # the dense trainer's iteration-based runs: stage 1 counts epochs
        stage.SOLVER.ITERS = 0
    stage.SOLVER.TYPE = "AdamW"
    stage.SOLVER.LR = section.PROMPT_LR
    stage.SOLVER.WEIGHT_DECAY = 0.0
    stage.SOLVER.LR_SCHEDULER = "cosine"
    stage.SOLVER.WARMUP_EPOCHS = 0
    stage.SOLVER.GRAD_CLIP = 0.0
    if "MIXUP" in stage:  # the student's recipe (mixing, smoothing, EMA) is not the prompts'
        stage.MIXUP.ALPHA = stage.MIXUP.CUTMIX = stage.SOLVER.LABEL_SMOOTHING = 0.0
        stage.EMA.ENABLE = False
    stage.EXPERIMENT.STAGE = PromptStage.name
    stage.freeze()
    return stage


def prompt_run(cfg: CN, name: str) -> Tuple[str, str, str]:
    """Stage 1's prompt file, run directory (the file's path without extension) and experiment name."""
    path = prompt_path(cfg, name)
    run_dir = os.path.splitext(path)[0]
    return path, run_dir, os.path.join(cfg.EXPERIMENT.PROJECT, "prompts", os.path.basename(run_dir))


def learn_prompts(cfg: CN, name: str, verbose: bool = True, resume: bool = False) -> str:
    """Stage 1 for the method whose config section is `name`; returns the prompt file's path.

    With `resume`, continues from the stage's ``latest`` checkpoint when there is one. Under torchrun
    each process learns on its shard of the data and rank 0 writes the files."""
    stage_cfg = prompt_learning_cfg(cfg, name)
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)):
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
        train_loader, val_loader, _, num_classes = get_dataset(stage_cfg, batch_fields=())
        train_loader, val_loader = shard_loaders(train_loader, val_loader, cfg.EXPERIMENT.SEED)
        return _learn_prompts(cfg, stage_cfg, name, train_loader, val_loader, num_classes, verbose, resume)


def _learn_prompts(cfg: CN, stage_cfg: CN, name: str, train_loader, val_loader, num_classes: int,
                   verbose: bool, resume: bool) -> str:
    device = local_device(resolve_device(cfg.SOLVER.DEVICE))
    teacher = build_teacher(cfg, num_classes).to(device).eval()
    dtype = autocast_dtype(device, cfg.SOLVER)
    teacher_top1 = mean_over_processes(evaluate(lambda image: teacher(image)[0], val_loader, device,
                                                lambda: autocast_context(device, dtype)), val_loader)[0]
    return train_prompts(cfg, name, teacher, train_loader, val_loader, teacher_top1, verbose, resume).path


def fresh_prompts(cfg: CN, name: str, teacher: nn.Module) -> Tuple[nn.ModuleList, List[int]]:
    """Freshly initialised prompts for `teacher`'s distilled features (the last NUM_STAGES of ``feats``,
    probed at the input size) and those features' indices: what stage 1 starts from."""
    shapes = feature_shapes(teacher, image_size(cfg))["feats"]
    indices = distilled_indices(len(shapes), cfg[name].NUM_STAGES, name)
    return build_prompts([shapes[i][1] for i in indices], cfg[name]), indices


def train_prompts(cfg: CN, name: str, teacher: nn.Module, train_loader, val_loader, teacher_top1: float,
                  verbose: bool = True, resume: bool = False) -> Trainer:
    """Stage 1 on these loaders: fresh prompts plugged into the frozen `teacher` (its hooks stay on it;
    pass a copy to keep the teacher plain) and trained by :class:`PromptTrainer`, which writes the prompt
    file; returns the trainer. `teacher_top1` is the plain teacher's accuracy, for the log and the file."""
    section = cfg[name]
    prompts, indices = fresh_prompts(cfg, name, teacher)
    model = PromptedTeacher(teacher, prompts, indices, image_size(cfg), section.DIVERSITY, section.DIVERSITY_WEIGHT)
    trainer = run_prompt_trainer(PromptTrainer, cfg, prompt_learning_cfg(cfg, name), name, model, train_loader,
                                 val_loader, indices, teacher_top1, "top-1", verbose, resume)
    if verbose:
        print(f"Teacher top-1 with the learned prompts {trainer.last_acc:.2f} (without {teacher_top1:.2f}).")
    return trainer


def run_prompt_trainer(trainer_cls, cfg: CN, stage_cfg: CN, name: str, model: nn.Module, train_loader, val_loader,
                       indices: Sequence[int], teacher_score: float, metric: str, verbose: bool = True,
                       resume: bool = False) -> Trainer:
    """Stage 1's training of `model`'s prompts by `trainer_cls` (a PromptTrainer); returns the trainer.

    With `resume`, continues from the stage's ``latest`` checkpoint when there is one."""
    path, run_dir, experiment = prompt_run(cfg, name)
    trainer = trainer_cls(experiment, model, train_loader, val_loader, stage_cfg, run_dir, path, name, indices,
                          teacher_score)
    section = cfg[name]
    if verbose:
        print(f"== {name} stage 1: prompts for {cfg.DISTILLER.TEACHER} maps {list(indices)} "
              f"(channels {[p.channels for p in model.prompts]}, T={section.TOKENS}, {section.DWT_LEVELS} DWT "
              f"levels), {section.PROMPT_EPOCHS} epochs; teacher {metric} without prompts {teacher_score:.2f}")
    trainer.train(resume=resume and os.path.isfile(os.path.join(run_dir, "latest")))
    return trainer


def initial_prompt_file(cfg: CN, teacher: nn.Module, path: Optional[str] = None) -> str:
    """Write freshly initialised prompts for `cfg`'s method and `teacher` (what stage 1 starts from) to
    `path` (default: where stage 2 looks); returns the path. For timing and tests: stage 2 costs the
    same with these as with learned prompts."""
    name = cfg.DISTILLER.TYPE
    prompts, indices = fresh_prompts(cfg, name, teacher)
    path = path or prompt_path(cfg, name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_checkpoint(prompt_record(prompts, teacher, cfg, name, indices), path)
    return path


@stage_dict.register("PROMPTS")
class PromptStage(Stage):
    """Frequency prompts learned in the frozen teacher (:func:`learn_prompts`), for the method whose
    config section is DISTILLER.TYPE; the output is its PROMPT_PATH (or the derived path)."""

    name = "PROMPTS"

    def output(self, cfg: CN) -> str:
        return prompt_path(cfg, cfg.DISTILLER.TYPE)

    def done(self, cfg: CN) -> bool:
        """The prompt file exists and was written after the last epoch (a file without an epoch, given
        by the user or :func:`initial_prompt_file`, counts as finished)."""
        path = self.output(cfg)
        if not os.path.isfile(path):
            return False
        epoch = load_checkpoint(path).get("epoch")
        return epoch is None or epoch >= cfg[cfg.DISTILLER.TYPE].PROMPT_EPOCHS

    def run(self, cfg: CN, resume: bool = False, verbose: bool = True) -> str:
        return self.learn(cfg, resume, verbose)

    def learn(self, cfg: CN, resume: bool, verbose: bool) -> str:
        """Stage 1 of the classification methods; mdistiller_dense overrides this for its models."""
        return learn_prompts(cfg, cfg.DISTILLER.TYPE, verbose, resume)

    def epochs_key(self, cfg: CN) -> str:
        return f"{cfg.DISTILLER.TYPE}.PROMPT_EPOCHS"

    def stand_in(self, cfg: CN, teacher: nn.Module, directory: str) -> Dict[str, str]:
        name = cfg.DISTILLER.TYPE
        path = initial_prompt_file(cfg, teacher, os.path.join(directory, f"{name.lower()}_prompts.pth"))
        return {f"{name}.PROMPT_PATH": path}
