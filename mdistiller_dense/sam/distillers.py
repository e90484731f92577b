"""The trained modules of the Segment Anything task, one per stage of MobileSAM's decoupled pipeline
(Zhang et al., "Faster Segment Anything", 2023) and FreeKD's supplement A.3 (Zhang et al., CVPR 2024):

- ``NONE`` (:class:`SamAlone`): a SAM trained whole with SAM's loss (the shapes teacher);
- stage 1, the image encoder distilled on the teacher's stored embeddings (``SAM_ENCODER`` stage):
  :class:`EncoderMSE` (``SAM_MSE``: MobileSAM's MSE between the two embeddings) and
  :class:`EncoderFreeKD` (``FREEKD``: FreeKD's masked band loss under the prompts of the
  ``SAM_PROMPTS`` stage, plus ``FEAT_WEIGHT`` times the MSE);
- stage 2, :class:`DecoderFinetune` (``SAM_MSE`` / ``FREEKD``, what tools/train_dense.py trains after
  the stages): the distilled encoder frozen, the teacher's prompt encoder and mask decoder copied in,
  the mask decoder fine-tuned with SAM's loss on one round of prompts (the supplement's "one round of
  interaction").

Every module holds the student ``Sam`` as ``student`` and answers ``scores(loader, device, autocast,
reduce)`` with its validation figures (the first one the run's ``test_acc``; ``reduce`` adds the
sums over processes).
"""

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import Rules
from mdistiller.distillers._base import Distiller, registrar
from mdistiller.distillers.frequency_prompts import PromptBandLoss, check_section, distilled_indices
from mdistiller.registry import Registry
from mdistiller_dense.sam.embeddings import EmbeddingStore
from mdistiller_dense.sam.evaluation import embedding_scores, prompt_miou
from mdistiller_dense.sam.prompts import preprocess, prompt_losses

__all__ = ["DecoderFinetune", "EncoderFreeKD", "EncoderMSE", "SAM_DEFAULTS", "SamAlone", "sam_distiller_dict",
           "sam_method_defaults", "sam_method_rules", "encoder_distiller_dict"]

sam_distiller_dict = Registry("SAM method")        # what tools/train_dense.py trains (stage 2, or NONE)
encoder_distiller_dict = Registry("SAM encoder method")  # the SAM_ENCODER stage's module per method
sam_method_defaults: Dict[str, CN] = {}
sam_method_rules: Dict[str, Rules] = {}
register_sam_distiller = registrar(sam_distiller_dict, sam_method_defaults, sam_method_rules)

SAM_DEFAULTS = CN()
SAM_DEFAULTS.IMAGE_SIZE = 1024       # input side (longest side resized, then padded; SAM / MobileSAM 1024)
SAM_DEFAULTS.MASKS_PER_IMAGE = 16    # masks (prompts) drawn per training image; validation: the first ones
SAM_DEFAULTS.POINT_PROB = 0.5        # a training prompt is one foreground point with this probability, else a box
SAM_DEFAULTS.BOX_NOISE = 0.1         # SAM: box noise std 10% of the side, at most 20 px
SAM_DEFAULTS.FOCAL_WEIGHT = 20.0     # SAM: focal : dice = 20 : 1
SAM_DEFAULTS.DICE_WEIGHT = 1.0
SAM_DEFAULTS.IOU_WEIGHT = 1.0        # SAM: IoU-prediction MSE, factor 1
SAM_DEFAULTS.ENCODER_ITERS = 10000   # stage 1 (encoder distillation) steps; FreeKD A.3: 10,000
SAM_DEFAULTS.ENCODER_LR = 0.001      # stage 1 LR (SOLVER.TYPE / BATCH_SIZE / schedule as stage 2)
SAM_DEFAULTS.ENCODER_PATH = ""       # stage 1's output; "": <LOG.PREFIX>/<PROJECT>/sam_encoders/<derived>.pth
SAM_DEFAULTS.EMBEDDING_DIR = ""      # teacher embedding stores; "": <LOG.PREFIX>/<PROJECT>/sam_embeddings

SAM_MSE_DEFAULTS = CN()
SAM_MSE_DEFAULTS.WEIGHT = 1.0        # stage 1: WEIGHT * MSE(student embedding, teacher embedding)


def loss_weights(cfg: CN):
    return cfg.SAM.FOCAL_WEIGHT, cfg.SAM.DICE_WEIGHT, cfg.SAM.IOU_WEIGHT


class SamModule(Distiller):
    """A student ``Sam`` trained on SA-1B-layout batches ``(images, targets)`` (mdistiller_dense/data/sa1b.py)."""

    fast_teacher = False
    ddp_find_unused_parameters = True

    def __init__(self, student: Sam, cfg: CN) -> None:
        super().__init__(student, None)
        self.point_prob, self.box_noise = cfg.SAM.POINT_PROB, cfg.SAM.BOX_NOISE
        self.weights = loss_weights(cfg)

    def embed(self, image: Tensor, target: List[Dict]) -> Tensor:
        """The student's image embeddings of a batch."""
        sizes = torch.stack([t["size"] for t in target]).to(image.device)
        return self.student.image_encoder(preprocess(self.student, image, sizes))

    def learnable(self) -> nn.Module:
        return self.student

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.learnable().parameters() if p.requires_grad]

    def forward_train(self, image: Tensor, target: List[Dict], **batch):
        losses = prompt_losses(self.student, self.embed(image, target), target, self.point_prob, self.box_noise,
                               self.weights)
        return None, losses

    def forward_test(self, image: Tensor) -> Tensor:
        sizes = torch.full((len(image), 2), image.shape[-1], device=image.device)
        return self.student.image_encoder(preprocess(self.student, image, sizes))

    def scores(self, loader, device: torch.device, autocast=None, reduce=list) -> "OrderedDict[str, float]":
        """Box- and point-prompt mIoU (percent) of the student on `loader` (sums through `reduce`)."""
        return prompt_miou(self.student, self.embed, loader, device, autocast, reduce)


@register_sam_distiller("NONE")
class SamAlone(SamModule):
    """A whole SAM trained with SAM's loss: every part learns (the shapes teacher, configs/shapes/sam_teacher.yaml)."""

    def __init__(self, student: Sam, teacher: Optional[Sam], cfg: CN, **info) -> None:
        super().__init__(student, cfg)


class DecoderFinetune(SamModule):
    """Stage 2: the stage-1 encoder (loaded by the builder) frozen, the prompt encoder frozen, the mask
    decoder learning from SAM's loss; it starts from the teacher's, which the builder copies in."""

    def __init__(self, student: Sam, teacher: Optional[Sam], cfg: CN, **info) -> None:
        super().__init__(student, cfg)
        student.image_encoder.requires_grad_(False)
        student.prompt_encoder.requires_grad_(False)
        student.mask_decoder.requires_grad_(True)

    def learnable(self) -> nn.Module:
        return self.student.mask_decoder

    def train(self, mode: bool = True) -> "DecoderFinetune":
        super().train(mode)
        self.student.image_encoder.eval()  # frozen: its normalisation statistics stay
        return self


@register_sam_distiller("SAM_MSE", SAM_MSE_DEFAULTS)
class SamMSE(DecoderFinetune):
    """MobileSAM: stage 1 :class:`EncoderMSE`, stage 2 the mask decoder fine-tuned."""

    stages = ("SAM_ENCODER",)


@register_sam_distiller("FREEKD")
class SamFreeKD(DecoderFinetune):
    """FreeKD on SAM (supplement A.3): prompts in the teacher (``SAM_PROMPTS``), stage 1
    :class:`EncoderFreeKD`, stage 2 the mask decoder fine-tuned."""

    stages = ("SAM_PROMPTS", "SAM_ENCODER")


class EncoderStage1(SamModule):
    """Stage 1: the student's image encoder learns the teacher's embeddings, read from ``stores``
    (``{"train": ..., "val": ...}`` :class:`EmbeddingStore`); the prompt encoder and decoder are frozen."""

    def __init__(self, student: Sam, cfg: CN, stores: Dict[str, EmbeddingStore], teacher: Sam) -> None:
        super().__init__(student, cfg)
        student.image_encoder.requires_grad_(True)
        student.prompt_encoder.requires_grad_(False)
        student.mask_decoder.requires_grad_(False)
        self.stores = stores

    def learnable(self) -> nn.Module:
        return self.student.image_encoder

    def teacher_embeddings(self, target: List[Dict], store: str, device: torch.device) -> Tensor:
        return self.stores[store].read([t["key"] for t in target], device)

    def forward_train(self, image: Tensor, target: List[Dict], **batch):
        student = self.embed(image, target)
        return None, self.encoder_losses(student, self.teacher_embeddings(target, "train", image.device))

    def encoder_losses(self, student: Tensor, teacher: Tensor) -> Dict[str, Tensor]:
        raise NotImplementedError

    def scores(self, loader, device: torch.device, autocast=None, reduce=list) -> "OrderedDict[str, float]":
        """Cosine similarity (percent) and MSE of the student's embeddings to the teacher's on `loader`."""
        return embedding_scores(self.embed, lambda target: self.teacher_embeddings(target, "val", device), loader,
                                device, autocast, reduce)


@encoder_distiller_dict.register("SAM_MSE")
class EncoderMSE(EncoderStage1):
    """MobileSAM's decoupled distillation: ``loss_mse = SAM_MSE.WEIGHT * MSE(student, teacher)``."""

    def __init__(self, student: Sam, cfg: CN, stores: Dict[str, EmbeddingStore], teacher: Sam) -> None:
        super().__init__(student, cfg, stores, teacher)
        self.weight = cfg.SAM_MSE.WEIGHT

    def encoder_losses(self, student: Tensor, teacher: Tensor) -> Dict[str, Tensor]:
        return {"loss_mse": self.weight * F.mse_loss(student.float(), teacher)}


@encoder_distiller_dict.register("FREEKD")
class EncoderFreeKD(PromptBandLoss, EncoderStage1):
    """FreeKD on the embedding (the one distilled map, 256 channels; no align conv: the decoder reads
    the student's embedding as it is):

        loss_kd   = FREEKD.WEIGHT * sum_k mean | M_{k,t} * a_k - M_{k,t} * b_k |   (frozen prompts, teacher bands)
        loss_feat = FREEKD.FEAT_WEIGHT * MSE(student, teacher)
    """

    section = "FREEKD"

    def __init__(self, student: Sam, cfg: CN, stores: Dict[str, EmbeddingStore], teacher: Sam) -> None:
        super().__init__(student, cfg, stores, teacher)
        check_section(cfg.FREEKD, "FREEKD")
        self.teacher_indices = distilled_indices(1, cfg.FREEKD.NUM_STAGES, "FREEKD", first=0)  # the embedding
        self.teacher_channels = [student.prompt_encoder.embed_dim]
        self.kd_weight, self.feat_weight = cfg.FREEKD.WEIGHT, cfg.FREEKD.FEAT_WEIGHT
        self.init_prompts(cfg, teacher)

    def encoder_losses(self, student: Tensor, teacher: Tensor) -> Dict[str, Tensor]:
        losses = {"loss_kd": self.kd_weight * self.frequency_loss([teacher], [student.float()])}
        if self.feat_weight > 0:
            losses["loss_feat"] = self.feat_weight * F.mse_loss(student.float(), teacher)
        return losses
