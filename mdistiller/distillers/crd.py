"""CRD: Tian et al., "Contrastive Representation Distillation" (ICLR 2020)."""

from typing import Optional

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, positive, probability
from mdistiller.dataset.base import image_size
from mdistiller.dataset.contrastive import CRD_MODES
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.measured import measured
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.losses.crd import ContrastMemory, Embed, contrast_loss

CRD_DEFAULTS = CN()
CRD_DEFAULTS.MODE = "exact"  # ("exact", "relax"): the positive is the sample itself or one of its class
CRD_DEFAULTS.FEAT = CN()
CRD_DEFAULTS.FEAT.DIM = 128
CRD_DEFAULTS.FEAT.STUDENT_DIM = 256
CRD_DEFAULTS.FEAT.TEACHER_DIM = 256
CRD_DEFAULTS.LOSS = CN()
CRD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
CRD_DEFAULTS.LOSS.FEAT_WEIGHT = 0.8
CRD_DEFAULTS.NCE = CN()
CRD_DEFAULTS.NCE.K = 16384
CRD_DEFAULTS.NCE.MOMENTUM = 0.5
CRD_DEFAULTS.NCE.TEMPERATURE = 0.07


@register_distiller("CRD", CRD_DEFAULTS, {"MODE": OneOf(CRD_MODES), "NCE.MOMENTUM": probability,
                                           "NCE.TEMPERATURE": positive})
class CRD(Distiller):
    """`loss = CE_WEIGHT * CE + FEAT_WEIGHT * (NCE(student vs teacher bank) + NCE(teacher vs student bank))`.

    `embed_s` / `embed_t` map the pooled features to FEAT.DIM-d unit vectors; `contrast` keeps one
    memory bank per model (num_data x FEAT.DIM). Batches carry `index` and, from the
    instance-sampled train set (see :mod:`mdistiller.dataset.contrastive`), `contrastive_index`
    (K + 1 indices); without it negatives are drawn uniformly from the whole bank.
    FEAT.STUDENT_DIM / TEACHER_DIM are measured (see :mod:`mdistiller.distillers.measured`).
    `get_extra_parameters` counts the memory banks too, as MDistiller does.
    """

    batch_fields = ("contrastive_index",)

    def __init__(self, student, teacher, cfg, num_data: int, **data_info) -> None:
        super().__init__(student, teacher)
        self.ce_loss_weight = cfg.CRD.LOSS.CE_WEIGHT
        self.feat_loss_weight = cfg.CRD.LOSS.FEAT_WEIGHT
        size = image_size(cfg)
        dim_s = measured(cfg, "CRD.FEAT.STUDENT_DIM", feature_shapes(student, size)["pooled_feat"][1])
        dim_t = measured(cfg, "CRD.FEAT.TEACHER_DIM", feature_shapes(teacher, size)["pooled_feat"][1])
        self.num_data = num_data
        self.embed_s = Embed(dim_s, cfg.CRD.FEAT.DIM)
        self.embed_t = Embed(dim_t, cfg.CRD.FEAT.DIM)
        self.contrast = ContrastMemory(cfg.CRD.FEAT.DIM, num_data, cfg.CRD.NCE.K, cfg.CRD.NCE.TEMPERATURE,
                                       cfg.CRD.NCE.MOMENTUM)

    def get_extra_parameters(self) -> int:
        return super().get_extra_parameters() + sum(t.numel() for t in self.contrast.state_dict().values())

    def crd_loss(self, feat_student: torch.Tensor, feat_teacher: torch.Tensor, index: torch.Tensor,
                 contrastive_index: Optional[torch.Tensor]) -> torch.Tensor:
        out_s, out_t = self.contrast(self.embed_s(feat_student), self.embed_t(feat_teacher), index, contrastive_index)
        return contrast_loss(out_s, self.num_data) + contrast_loss(out_t, self.num_data)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, index: Optional[torch.Tensor] = None,
                      contrastive_index: Optional[torch.Tensor] = None, **batch):
        if index is None:
            raise ValueError("CRD needs each sample's dataset index: batches must be (image, target, index, ...)")
        logits_student, features_student = self.student(image)
        _, features_teacher = self.teacher_forward(image)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.feat_loss_weight * self.crd_loss(
                features_student["pooled_feat"], features_teacher["pooled_feat"], index, contrastive_index),
        }
        return logits_student, losses
