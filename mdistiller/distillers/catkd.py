"""CAT-KD: Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CVPR 2023)."""

from typing import Dict, List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.classifier import ClassifierInputRecorder, find_classifier, no_pooled_classifier
from mdistiller.errors import ConfigError
from mdistiller.losses.catkd import cat_loss, class_activation_maps
from mdistiller.losses.spatial import pool_to_size

CATKD_DEFAULTS = CN()
CATKD_DEFAULTS.CAM_RESOLUTION = 2
CATKD_DEFAULTS.NORMALIZE = False
CATKD_DEFAULTS.LOSS = CN()
CATKD_DEFAULTS.LOSS.CE_WEIGHT = 1.0
CATKD_DEFAULTS.LOSS.CAT_WEIGHT = 15.0


def class_map_recorder(model: nn.Module, size: int) -> ClassifierInputRecorder:
    """The recorder of the map `model` average-pools into its linear classifier, or a refusal."""
    try:
        return ClassifierInputRecorder(model, size)
    except ConfigError as error:
        raise no_pooled_classifier(model, "CATKD", "its class activation maps need a CNN with a pooled linear head") from error


@register_distiller("CATKD", CATKD_DEFAULTS)
class CATKD(Distiller):
    """``loss_ce = CE_WEIGHT * CE(s, y)``; ``loss_kd = CAT_WEIGHT * MSE(norm(pool_R(CAM_s)), norm(pool_R(CAM_t)))``.

    ``CAM = W F``: each model's classifier weight applied as a bias-free 1x1 conv to the map it
    globally pools (found by a probe, captured by a hook). As in the authors' code the student's
    classifier has no bias: its bias is set to 0 and frozen here, so its logits are exactly
    ``GAP(CAM_s)`` and the plain student is the deployed model; the teacher's bias is ignored.
    Pooling to R x R before applying W equals pooling the CAMs (both are linear) and is cheaper.
    Defaults: the authors' res32x4 -> res8x4 setting (R 2, no normalisation, beta 15).
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.CATKD
        self.resolution = section.CAM_RESOLUTION
        self.normalize = section.NORMALIZE
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.cat_loss_weight = section.LOSS.CAT_WEIGHT
        self.student_classifier_name, student_classifier = find_classifier(student)
        self.teacher_classifier_name, _ = find_classifier(teacher)
        if student_classifier.bias is not None:
            nn.init.zeros_(student_classifier.bias)
            student_classifier.bias.requires_grad_(False)
        self.student_maps = class_map_recorder(student, image_size(cfg))
        self.teacher_maps = class_map_recorder(teacher, image_size(cfg))

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        return [p for p in super().get_learnable_parameters() if p.requires_grad]

    def class_maps(self, model: nn.Module, classifier_name: str, feature: Tensor) -> Tensor:
        """The model's CAMs at R x R resolution."""
        size = (self.resolution, self.resolution)
        weight = model.get_submodule(classifier_name).weight
        return class_activation_maps(pool_to_size(feature, size), weight)

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, _ = self.student(image)
        cam_student = self.class_maps(self.student, self.student_classifier_name, self.student_maps.pop())
        self.teacher_forward(image)
        cam_teacher = self.class_maps(self.teacher, self.teacher_classifier_name, self.teacher_maps.pop()).detach()
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.cat_loss_weight * cat_loss(cam_student, cam_teacher, self.resolution, self.normalize),
        }
        return logits_student, losses
