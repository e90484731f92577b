"""SFAKD: You et al., "Smooth the Signal, Distill the Essence: A Frequency-Aware Modulation
Framework for Knowledge Distillation" (2025)."""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.classifier import find_classifier, find_classifier_input, no_pooled_classifier
from mdistiller.distillers.feature_shapes import feature_shapes, model_name
from mdistiller.errors import ConfigError, IncompatibleModelError
from mdistiller.frequency import SmoothedFrequencyAugmentation, remove_dc
from mdistiller.losses.kd import kd_loss
from mdistiller.losses.sfakd import bottleneck_projector, sfakd_feature_loss
from mdistiller.losses.spatial import common_size, pool_to_size

SFAKD_DEFAULTS = CN()
SFAKD_DEFAULTS.CUT_OFF = 0.1
SFAKD_DEFAULTS.POOLED = False
SFAKD_DEFAULTS.REMOVE_DC = False
SFAKD_DEFAULTS.TEACHER_CLASSIFIER = True
SFAKD_DEFAULTS.TEMPERATURE = 4.0
SFAKD_DEFAULTS.LOSS = CN()
SFAKD_DEFAULTS.LOSS.CE_WEIGHT = 0.0
SFAKD_DEFAULTS.LOSS.KD_WEIGHT = 0.0
SFAKD_DEFAULTS.LOSS.FEAT_WEIGHT = 1.0


@register_distiller("SFAKD", SFAKD_DEFAULTS)
class SFAKD(Distiller):
    """Smoothed frequency augmentation of the student's last map, a bottleneck projector to the
    teacher's channels, and (authors' code, the default) the teacher's frozen classifier on top.

    With ``s``, ``t`` the last-stage maps ``feats[-1]`` (the larger average-pooled to the smaller
    size) and ``p = transfer(SFA(s))``:

        loss_feat = FEAT_WEIGHT * MSE(p, t)             (POOLED True: MSE(GAP(p), GAP(t)))
        logits    = head_teacher(GAP(p))                (TEACHER_CLASSIFIER False: the student's own)
        loss_ce   = CE_WEIGHT * CE(logits, y),  loss_kd = KD_WEIGHT * KD(logits, teacher logits, T)

    ``REMOVE_DC True`` compares ``p`` and ``t`` with each channel's spatial mean removed: their
    spectra without the DC coefficient, which dominates token (ViT / Swin) features (ScaleKD's
    observation; :func:`~mdistiller.frequency.remove_dc`). A term whose weight is 0 is left out (the
    default trains on ``loss_feat`` alone, as the authors). ``head_teacher`` is the teacher's whole
    head after its global pooling: for a timm teacher ``forward_head`` (norms included: ConvNeXt's
    LayerNorm, a ViT's ``fc_norm``; the class token or the token mean it reads is the pooled vector)
    then ``get_classifier()``, which needs the last map as wide as the final features (EfficientNet's
    ``conv_head`` widens them: refused); for a zoo or torchvision teacher its last linear layer. A
    token teacher's final norm acts on each token before pooling, so it is part of the features,
    not of that head. With the teacher's head, every student parameter that its last map does not
    depend on (its own classifier, a token model's final norm) is on no path and is frozen
    (``requires_grad`` False), so DDP waits for no gradient that never comes. Training,
    ``forward_test`` (evaluation) and export share the prediction path, so the deployed student is
    student + ``sfa`` + ``transfer`` + the teacher's head: evaluate a
    full checkpoint (``best`` / ``latest``), not ``student_best``. The SFA filter is as large as the
    aligned maps, found by a probe forward at ``DATASET.IMAGE_SIZE``.

    With POOLED True and a zoo teacher whose last map is already at the common size, GAP(t) is read
    as the teacher's pre-logit vector ``pooled_feat`` (the same mean): the method then needs the
    teacher's logits and pre-logits only, which the teacher cache (TEACHER_CACHE.MODE) can hold.
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.SFAKD
        if section.CUT_OFF <= 0:
            raise ConfigError(f"SFAKD.CUT_OFF must be positive, got {section.CUT_OFF}.")
        self.pooled = section.POOLED
        self.remove_dc = section.REMOVE_DC
        if self.pooled and self.remove_dc:
            raise ConfigError("SFAKD.POOLED compares channel means, which SFAKD.REMOVE_DC removes: set one of them False.")
        self.use_teacher_classifier = section.TEACHER_CLASSIFIER
        self.temperature = section.TEMPERATURE
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.kd_loss_weight = section.LOSS.KD_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT
        if not self.use_teacher_classifier and self.ce_loss_weight == 0 and self.kd_loss_weight == 0:
            raise ConfigError(
                "SFAKD.TEACHER_CLASSIFIER False predicts with the student's own classifier, which "
                "nothing trains: set SFAKD.LOSS.CE_WEIGHT or SFAKD.LOSS.KD_WEIGHT above 0."
            )

        size = image_size(cfg)
        s_shape = feature_shapes(student, size)["feats"][-1]
        t_shape = feature_shapes(teacher, size)["feats"][-1]
        self.feature_size = common_size(s_shape, t_shape)
        self.classifier_name, self.teacher_final_shape = "", None
        if self.use_teacher_classifier:
            self.check_teacher_head(teacher, t_shape[-3], size)
            freeze_unreached(student, size)  # the student's own head: on no path, so DDP waits for none of it
        # POOLED compares GAP(t); for a zoo CNN whose last map needs no pooling to the common size that
        # is its pre-logit vector (pooled_feat), which the teacher cache holds beside the logits.
        self.pooled_target = (self.pooled and tuple(t_shape[-2:]) == tuple(self.feature_size)
                              and not hasattr(teacher, "kind"))
        self.teacher_outputs = ("logits", "pre_logits") if self.pooled_target else ("maps",)
        if not self.pooled:
            self.teacher_cache_hint = "SFAKD.POOLED True compares the teacher's pooled vector, which the cache holds"
        self.teacher_modules_kept = (self.classifier_name,) if self.classifier_name else ()
        self.sfa = SmoothedFrequencyAugmentation(s_shape[-3], self.feature_size, section.CUT_OFF)
        self.transfer = bottleneck_projector(s_shape[-3], t_shape[-3])

    def check_teacher_head(self, teacher: nn.Module, channels: int, size: int) -> None:
        """Where the teacher's head is found, or its one-line refusal: a timm model's whole head after
        pooling (``forward_head``, its norms included), else the last linear layer on a pooled map."""
        fix = "set SFAKD.TEACHER_CLASSIFIER False and SFAKD.LOSS.CE_WEIGHT 1"
        if hasattr(teacher, "head_from_pooled"):  # timm: forward_head on the pooled vector
            self.teacher_final_shape = teacher.final_shape(size)
            head_channels = teacher.final_channels(self.teacher_final_shape)
            if head_channels != channels:
                raise IncompatibleModelError(
                    f"SFAKD (TEACHER_CLASSIFIER True) feeds its projection of the teacher's last map ({channels} "
                    f"channels) to {model_name(teacher)}'s head, which takes {head_channels}: {fix}")
            return
        self.classifier_name, classifier = find_classifier(teacher)
        if classifier.in_features != channels:
            raise ConfigError(
                f"SFAKD reuses the teacher's classifier '{self.classifier_name}' ({classifier.in_features} inputs), "
                f"but the teacher's last feature map has {channels} channels; set SFAKD.TEACHER_CLASSIFIER False."
            )
        if hasattr(teacher, "kind"):  # a torchvision model (or a hooked timm one)
            try:
                find_classifier_input(teacher, size)
            except ConfigError as error:
                raise no_pooled_classifier(teacher, "SFAKD (TEACHER_CLASSIFIER True)", fix) from error

    def teacher_logits(self, pooled: Tensor) -> Tensor:
        """The teacher's frozen head on a pooled (N, C) vector: a timm teacher's whole head after its
        pooling (:meth:`~mdistiller.models.adapter.TimmFeatureModel.head_from_pooled`), else its
        classifier."""
        if self.teacher_final_shape is not None:
            return self.teacher.head_from_pooled(pooled, self.teacher_final_shape)
        return self.teacher.get_submodule(self.classifier_name)(pooled)

    def project(self, student_map: Tensor) -> Tensor:
        """``transfer(SFA(s))`` on the student's last map, pooled to the common size first."""
        return self.transfer(self.sfa(pool_to_size(student_map, self.feature_size)))

    def predict(self, projected: Tensor, logits_student: Tensor) -> Tensor:
        """The teacher's frozen head on GAP(projected), or the student's logits."""
        if not self.use_teacher_classifier:
            return logits_student
        return self.teacher_logits(projected.mean(dim=(2, 3)))

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, feats_student = self.student(image)
        logits_teacher, feats_teacher = self.teacher_forward(image)
        projected = self.project(feats_student["feats"][-1])
        if self.pooled_target:
            teacher_map = feats_teacher["pooled_feat"]
        else:
            teacher_map = pool_to_size(feats_teacher["feats"][-1], self.feature_size)
        logits = self.predict(projected, logits_student)
        if self.remove_dc:
            compared, teacher_map = remove_dc(projected), remove_dc(teacher_map)
        else:
            compared = projected
        losses = {"loss_feat": self.feat_loss_weight * sfakd_feature_loss(compared, teacher_map, self.pooled)}
        if self.ce_loss_weight:
            losses["loss_ce"] = self.ce_loss_weight * F.cross_entropy(logits, target)
        if self.kd_loss_weight:
            losses["loss_kd"] = self.kd_loss_weight * kd_loss(logits, logits_teacher, self.temperature)
        return logits, losses

    def forward_test(self, image: Tensor) -> Tensor:
        logits_student, feats_student = self.student(image)
        if not self.use_teacher_classifier:
            return logits_student
        return self.predict(self.project(feats_student["feats"][-1]), logits_student)


def freeze_unreached(model: nn.Module, image_size: int) -> None:
    """``requires_grad`` False on each parameter of ``model`` its last feature map does not depend on
    (its own head: the classifier, a token model's final norm, ConvNeXt's head norm, EfficientNet's
    ``conv_head``): found by one probe forward and backward in eval mode, mode restored, also when
    the distiller is built under ``torch.no_grad()`` (export, evaluation)."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        return
    param = params[0][1]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            _, feats = model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
            grads = torch.autograd.grad(feats["feats"][-1].sum(), [p for _, p in params], allow_unused=True)
    finally:
        model.train(was_training)
    for (_, p), grad in zip(params, grads):
        if grad is None:
            p.requires_grad_(False)
