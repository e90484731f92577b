"""SFAKD: You et al., "Smooth the Signal, Distill the Essence: A Frequency-Aware Modulation
Framework for Knowledge Distillation" (2025)."""

from typing import Dict, Tuple

import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.classifier import find_classifier, find_classifier_input, no_pooled_classifier
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.errors import ConfigError
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
        logits    = fc_teacher(GAP(p))                  (TEACHER_CLASSIFIER False: the student's own)
        loss_ce   = CE_WEIGHT * CE(logits, y),  loss_kd = KD_WEIGHT * KD(logits, teacher logits, T)

    ``REMOVE_DC True`` compares ``p`` and ``t`` with each channel's spatial mean removed: their
    spectra without the DC coefficient, which dominates token (ViT / Swin) features (ScaleKD's
    observation; :func:`~mdistiller.frequency.remove_dc`). A term whose weight is 0 is left out (the
    default trains on ``loss_feat`` alone, as the authors). With the teacher's classifier, the
    student's own classifier is on no path and is frozen (``requires_grad`` False). Training,
    ``forward_test`` (evaluation) and export share the prediction path, so the deployed student is
    student + ``sfa`` + ``transfer`` + the teacher's classifier: evaluate a
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

        s_shape = feature_shapes(student, image_size(cfg))["feats"][-1]
        t_shape = feature_shapes(teacher, image_size(cfg))["feats"][-1]
        self.feature_size = common_size(s_shape, t_shape)
        self.classifier_name, classifier = find_classifier(teacher)
        if self.use_teacher_classifier and classifier.in_features != t_shape[-3]:
            raise ConfigError(
                f"SFAKD reuses the teacher's classifier '{self.classifier_name}' ({classifier.in_features} inputs), "
                f"but the teacher's last feature map has {t_shape[-3]} channels; set SFAKD.TEACHER_CLASSIFIER False."
            )
        if self.use_teacher_classifier and hasattr(teacher, "kind"):  # a timm / torchvision model
            try:
                find_classifier_input(teacher, image_size(cfg))
            except ConfigError as error:
                raise no_pooled_classifier(teacher, "SFAKD (TEACHER_CLASSIFIER True)",
                                           "set SFAKD.TEACHER_CLASSIFIER False and SFAKD.LOSS.CE_WEIGHT 1") from error
        # A token student's final norm feeds only its own classifier: unused too, so DDP must look for it.
        self.ddp_find_unused_parameters = self.use_teacher_classifier and getattr(student, "kind", "cnn") == "token"
        if self.use_teacher_classifier:  # no loss term reaches the student's own classifier: frozen, so
            find_classifier(student)[1].requires_grad_(False)  # DDP does not wait for its gradient
        # POOLED compares GAP(t); for a zoo CNN whose last map needs no pooling to the common size that
        # is its pre-logit vector (pooled_feat), which the teacher cache holds beside the logits.
        self.pooled_target = (self.pooled and tuple(t_shape[-2:]) == tuple(self.feature_size)
                              and not hasattr(teacher, "kind"))
        self.teacher_outputs = ("logits", "pre_logits") if self.pooled_target else ("maps",)
        if not self.pooled:
            self.teacher_cache_hint = "SFAKD.POOLED True compares the teacher's pooled vector, which the cache holds"
        self.teacher_modules_kept = (self.classifier_name,) if self.use_teacher_classifier else ()
        self.sfa = SmoothedFrequencyAugmentation(s_shape[-3], self.feature_size, section.CUT_OFF)
        self.transfer = bottleneck_projector(s_shape[-3], t_shape[-3])

    def project(self, student_map: Tensor) -> Tensor:
        """``transfer(SFA(s))`` on the student's last map, pooled to the common size first."""
        return self.transfer(self.sfa(pool_to_size(student_map, self.feature_size)))

    def predict(self, projected: Tensor, logits_student: Tensor) -> Tensor:
        """The teacher's frozen classifier on GAP(projected), or the student's logits."""
        if not self.use_teacher_classifier:
            return logits_student
        classifier = self.teacher.get_submodule(self.classifier_name)
        return classifier(projected.mean(dim=(2, 3)))

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
