"""The stages before the mask-decoder fine-tuning, run by the engine (mdistiller/engine/stages.py):

- ``SAM_PROMPTS`` (FREEKD): FreeKD's stage 1, frequency prompts learned on the frozen teacher's
  embedding (its encoder's output, read from the embedding store) through the teacher's own prompt
  encoder and mask decoder with SAM's loss plus the masks' diversity; the prompt file, solver and
  checks of classification's stage 1 (:mod:`mdistiller.engine.prompt_learning`).
- ``SAM_ENCODER`` (SAM_MSE, FREEKD): the student's image encoder distilled for SAM.ENCODER_ITERS
  iterations at SAM.ENCODER_LR (the rest of SOLVER as stage 2) on the teacher's stored embeddings;
  the encoder file (``encoder`` state dict, ``iteration``) is written after every validation interval
  and its run directory (the file's path without extension) holds the ``latest`` checkpoint a resumed
  stage continues from.

Both fill the teacher's embedding stores first (:func:`~mdistiller_dense.sam.build.teacher_stores`:
computed once per image, read from disk afterwards).
"""

import os
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers.frequency_prompts import build_prompts, distilled_indices, prompt_record
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.engine.distributed import barrier, local_device, process_group, shard_loaders, sum_over_processes
from mdistiller.engine.prompt_learning import PromptStage, PromptTrainer, prompt_learning_cfg, run_prompt_trainer
from mdistiller.engine.stages import Stage, stage_dict
from mdistiller.engine.utils import resolve_device, seed_everything
from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.sam.build import build_sam_teacher, encoder_path, teacher_stores
from mdistiller_dense.sam.distillers import encoder_distiller_dict, loss_weights
from mdistiller_dense.sam.embeddings import EmbeddingStore
from mdistiller_dense.sam.evaluation import prompt_miou
from mdistiller_dense.sam.models import build_sam_model
from mdistiller_dense.sam.prompts import prompt_losses
from mdistiller_dense.sam.trainer import SamTrainer

__all__ = ["PromptedSam", "SamEncoderStage", "SamPromptStage", "distill_encoder", "learn_sam_prompts"]


def _stage_setup(cfg: CN, stage_cfg: CN):
    """Seeded loaders (sharded under torchrun), the frozen teacher and its filled embedding stores."""
    seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
    train_loader, val_loader, _ = build_dense_loaders(stage_cfg)
    device = local_device(resolve_device(cfg.SOLVER.DEVICE))
    teacher = build_sam_teacher(cfg)
    stores = teacher_stores(cfg, teacher, {"train": train_loader, "val": val_loader}, device)
    train_loader, val_loader = shard_loaders(train_loader, val_loader, cfg.EXPERIMENT.SEED)
    return train_loader, val_loader, teacher, stores


# -- SAM_PROMPTS --------------------------------------------------------------------------------
class PromptedSam(nn.Module):
    """The frozen teacher with a frequency prompt on its image embedding; only the prompt learns.
    ``forward(image=, target=)`` in training mode gives ``(None, {SAM's loss terms, "loss_div"})``."""

    def __init__(self, teacher: nn.Module, prompts: nn.ModuleList, stores: Dict[str, EmbeddingStore], cfg: CN) -> None:
        super().__init__()
        self.teacher, self.prompts, self.stores = teacher.requires_grad_(False), prompts, stores
        self.point_prob, self.box_noise, self.weights = cfg.SAM.POINT_PROB, cfg.SAM.BOX_NOISE, loss_weights(cfg)
        self.diversity_kind, self.diversity_weight = cfg.FREEKD.DIVERSITY, cfg.FREEKD.DIVERSITY_WEIGHT

    def train(self, mode: bool = True) -> "PromptedSam":
        super().train(mode)
        self.teacher.eval()
        return self

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return list(self.prompts.parameters())

    def prompted(self, target: List[Dict], split: str, device: torch.device):
        embedding = self.stores[split].read([t["key"] for t in target], device)
        return self.prompts[0](embedding)

    def forward(self, image: Tensor, target: Optional[List[Dict]] = None, **batch):
        prompted, masks = self.prompted(target, "train", image.device)
        losses = prompt_losses(self.teacher, prompted.float(), target, self.point_prob, self.box_noise, self.weights)
        losses["loss_div"] = self.diversity_weight * self.prompts[0].diversity(masks, self.diversity_kind)
        return None, losses

    def scores(self, loader, device: torch.device, autocast=None, reduce=list) -> "OrderedDict[str, float]":
        """Box and point mIoU of the teacher through the prompt."""
        return prompt_miou(self.teacher, lambda image, target: self.prompted(target, "val", device)[0].float(),
                           loader, device, autocast, reduce)


class SamPromptTrainer(PromptTrainer, SamTrainer):
    """Classification's prompt trainer (prompt file after every epoch) with the SAM batches and scores."""


def learn_sam_prompts(cfg: CN, resume: bool = False, verbose: bool = True) -> str:
    """FreeKD's stage 1 on the teacher's embedding; returns the prompt file's path."""
    name = cfg.DISTILLER.TYPE
    stage_cfg = prompt_learning_cfg(cfg, name)
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)):
        train_loader, val_loader, teacher, stores = _stage_setup(cfg, stage_cfg)
        indices = distilled_indices(1, cfg[name].NUM_STAGES, name, first=0)
        model = PromptedSam(teacher, build_prompts([teacher.prompt_encoder.embed_dim], cfg[name]), stores, cfg)
        device = local_device(resolve_device(cfg.SOLVER.DEVICE))
        plain = prompt_miou(teacher, lambda image, target: stores["val"].read([t["key"] for t in target], device),
                            val_loader, device, reduce=sum_over_processes)
        trainer = run_prompt_trainer(SamPromptTrainer, cfg, stage_cfg, name, model.cpu(), train_loader, val_loader,
                                     indices, plain["box_miou"], "box mIoU", verbose, resume)
        return trainer.path


@stage_dict.register("SAM_PROMPTS")
class SamPromptStage(PromptStage):
    """The ``"PROMPTS"`` stage (prompt file, checks, solver) on the SAM teacher's embedding: :func:`learn_sam_prompts`."""

    def learn(self, cfg: CN, resume: bool, verbose: bool) -> str:
        return learn_sam_prompts(cfg, resume, verbose)

    def stand_in(self, cfg: CN, teacher: nn.Module, directory: str) -> Dict[str, str]:
        name = cfg.DISTILLER.TYPE
        path = os.path.join(directory, f"{name.lower()}_sam_prompts.pth")
        prompts = build_prompts([teacher.prompt_encoder.embed_dim], cfg[name])
        save_checkpoint(prompt_record(prompts, teacher, cfg, name, [0]), path)
        return {f"{name}.PROMPT_PATH": path}


# -- SAM_ENCODER --------------------------------------------------------------------------------
def encoder_stage_cfg(cfg: CN) -> CN:
    """`cfg` with stage 1's length and LR: SOLVER.ITERS = SAM.ENCODER_ITERS, SOLVER.LR = SAM.ENCODER_LR."""
    stage = cfg.clone()
    stage.defrost()
    stage.SOLVER.ITERS = cfg.SAM.ENCODER_ITERS
    stage.SOLVER.LR = cfg.SAM.ENCODER_LR
    stage.EXPERIMENT.STAGE = SamEncoderStage.name
    stage.freeze()
    return stage


class SamEncoderTrainer(SamTrainer):
    """Writes the encoder file and the ``latest`` checkpoint after every validation interval."""

    def __init__(self, *args, path: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.path = path

    def save(self, epoch: int, test_acc: float) -> None:
        if self.is_main:
            student = self.distiller.student
            record = {"encoder": student.image_encoder.state_dict(), "iteration": min(self.iteration(epoch + 1, 0), self.iterations),
                      "method": self.cfg.DISTILLER.TYPE, "teacher": self.cfg.DISTILLER.TEACHER,
                      "student": self.cfg.DISTILLER.STUDENT, "image_size": self.cfg.SAM.IMAGE_SIZE,
                      "cosine": test_acc, "cfg": self.cfg.dump()}
            save_checkpoint(record, self.path)
            save_checkpoint(self.state(epoch), os.path.join(self.run_dir, "latest"))
        barrier()


def distill_encoder(cfg: CN, resume: bool = False, verbose: bool = True) -> str:
    """Stage 1: the student's encoder distilled by DISTILLER.TYPE's encoder method; returns the file."""
    stage_cfg = encoder_stage_cfg(cfg)
    path = encoder_path(cfg)
    run_dir = os.path.splitext(path)[0]
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)):
        train_loader, val_loader, teacher, stores = _stage_setup(cfg, stage_cfg)
        student = build_sam_model(cfg.DISTILLER.STUDENT, cfg.SAM.IMAGE_SIZE)
        model = encoder_distiller_dict.get(cfg.DISTILLER.TYPE)(student, cfg, stores, teacher.cpu())
        del teacher
        experiment = os.path.join(cfg.EXPERIMENT.PROJECT, "sam_encoders", os.path.basename(run_dir))
        trainer = SamEncoderTrainer(experiment, model, train_loader, val_loader, stage_cfg, run_dir=run_dir, path=path)
        if verbose:
            print(f"== {cfg.DISTILLER.TYPE} stage 1: {cfg.DISTILLER.STUDENT} encoder from {cfg.DISTILLER.TEACHER}'s "
                  f"embeddings ({stores['train'].directory}), {cfg.SAM.ENCODER_ITERS} iterations")
        trainer.train(resume=resume and os.path.isfile(os.path.join(run_dir, "latest")))
    return path


@stage_dict.register("SAM_ENCODER")
class SamEncoderStage(Stage):
    """Stage 1 of MobileSAM's pipeline (:func:`distill_encoder`); output: the encoder file."""

    name = "SAM_ENCODER"

    def output(self, cfg: CN) -> str:
        return encoder_path(cfg)

    def done(self, cfg: CN) -> bool:
        """The encoder file exists and was written after the last iteration (or holds no count)."""
        path = self.output(cfg)
        if not os.path.isfile(path):
            return False
        iteration = load_checkpoint(path).get("iteration")
        return iteration is None or iteration >= cfg.SAM.ENCODER_ITERS

    def run(self, cfg: CN, resume: bool = False, verbose: bool = True) -> str:
        return distill_encoder(cfg, resume, verbose)

    def epochs_key(self, cfg: CN) -> str:
        return "SAM.ENCODER_ITERS"

    def stand_in(self, cfg: CN, teacher: nn.Module, directory: str) -> Dict[str, str]:
        path = os.path.join(directory, "sam_encoder.pth")
        student = build_sam_model(cfg.DISTILLER.STUDENT, cfg.SAM.IMAGE_SIZE)
        save_checkpoint({"encoder": student.image_encoder.state_dict()}, path)
        return {"SAM.ENCODER_PATH": path}
