"""The dense distiller base: a torchvision student and a frozen teacher, features captured by hooks."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, Rules
from mdistiller.distillers._base import Distiller, registrar
from mdistiller.errors import ConfigError
from mdistiller.registry import Registry
from mdistiller_dense.hooks import FeatureCapture, as_levels, default_feature_modules
from mdistiller_dense.models import DETECTORS, parse_model_name

__all__ = ["DenseBatch", "DenseDistiller", "dense_distiller_dict", "dense_method_defaults",
           "register_dense_distiller", "dense_method_rules", "level_channels", "level_shapes", "align_convs", "select_levels",
           "DOMAINS", "DOMAIN_RULES", "check_domain"]

dense_distiller_dict = Registry("dense distiller")
dense_method_defaults: Dict[str, CN] = {}
dense_method_rules: Dict[str, Rules] = {}

PROBE_SIZE = 64


register_dense_distiller = registrar(dense_distiller_dict, dense_method_defaults, dense_method_rules)
register_dense_distiller.__doc__ = "Class decorator: registers a dense distiller under `name` and its config section."


@dataclass
class DenseBatch:
    """What a distiller may need beside the features: the transformed targets (boxes in the
    coordinates of the batch tensor), the unpadded image sizes (h, w), and the batch tensor."""

    tensor: Tensor
    targets: Optional[List[Dict[str, Tensor]]] = None
    image_sizes: Optional[List[Tuple[int, int]]] = None


def select_levels(levels: Sequence[Tensor], count: int) -> List[Tensor]:
    """The first ``count`` levels (all when ``count`` is 0)."""
    return list(levels[:count] if count > 0 else levels)


@torch.no_grad()
def level_shapes(model: nn.Module, names: Sequence[str], size: int = PROBE_SIZE) -> List[Tuple[int, int, int]]:
    """(C, H, W) of each captured level, from a probe of ``model.backbone`` on a zero image of ``size``."""
    capture = FeatureCapture(model, names)
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters())
        model.backbone(torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype))
        return [tuple(level.shape[1:]) for level in as_levels(capture.pop())]
    finally:
        capture.remove()
        model.train(was_training)


def level_channels(model: nn.Module, names: Sequence[str]) -> List[int]:
    """Channels of each captured level."""
    return [shape[0] for shape in level_shapes(model, names)]


def align_convs(s_channels: Sequence[int], t_channels: Sequence[int], bias: bool = True,
                always: bool = False) -> nn.ModuleList:
    """Per level a 1x1 conv from the student's to the teacher's channels, or Identity when they are
    equal (unless `always`: FreeKD's authors align every level)."""
    return nn.ModuleList(
        nn.Conv2d(cs, ct, kernel_size=1, bias=bias) if always or cs != ct else nn.Identity()
        for cs, ct in zip(s_channels, t_channels))


DOMAINS = ("spatial", "frequency")
DOMAIN_RULES = {"DOMAIN": OneOf(DOMAINS)}  # the section checks of a method with a DOMAIN key


def check_domain(section: CN, name: str) -> bool:
    """Whether ``<name>.DOMAIN`` asks for the frequency domain; ConfigError unless it is one of DOMAINS."""
    DOMAIN_RULES["DOMAIN"].check(f"{name}.DOMAIN", section.DOMAIN)
    if section.DOMAIN == "frequency" and section.DWT_LEVELS < 1:
        raise ConfigError(f"{name}.DWT_LEVELS must be at least 1 with DOMAIN frequency, got {section.DWT_LEVELS}.")
    return section.DOMAIN == "frequency"


class DenseDistiller(Distiller):
    """A torchvision detector or segmenter student, a frozen teacher of the same task, and the
    method's modules.

    One step: the student runs its own forward (its transform resizes, normalises and pads the
    batch once; detectors return their losses), hooks capture its feature modules and its
    transform's output; the teacher's backbone runs on that same padded batch tensor (no_grad)
    with its own hooks. ``distill(s_levels, t_levels, batch)`` returns the method's weighted losses.
    Feature modules: DISTILLER.STUDENT_FEATURES / TEACHER_FEATURES (module names; default the FPN
    for detectors, ``backbone.layer4`` for segmenters); the teacher's must lie in its backbone.
    ``forward_test`` returns the student's detections (list of dicts) or logits (B, K, H, W).
    """

    fast_teacher = False
    ddp_find_unused_parameters = True

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], cfg: CN, num_classes: int = 0,
                 **info) -> None:
        super().__init__(student, teacher)
        kind, _ = parse_model_name(cfg.DISTILLER.STUDENT)
        self.detection = kind in DETECTORS
        self.num_classes = num_classes
        self.ignore_index = cfg.DATASET.IGNORE_INDEX
        self.aux_weight = cfg.MODEL.AUX_WEIGHT
        self.transform_capture = FeatureCapture(student, ["transform"]) if self.detection else None
        self.student_capture: Optional[FeatureCapture] = None
        self.teacher_capture: Optional[FeatureCapture] = None
        if teacher is None:
            return
        t_kind, _ = parse_model_name(cfg.DISTILLER.TEACHER)
        if (t_kind in DETECTORS) != self.detection:
            raise ConfigError(f"Teacher {cfg.DISTILLER.TEACHER} and student {cfg.DISTILLER.STUDENT} solve "
                              "different tasks; pair two detectors or two segmenters.")
        s_names = list(cfg.DISTILLER.STUDENT_FEATURES) or default_feature_modules(kind)
        t_names = list(cfg.DISTILLER.TEACHER_FEATURES) or default_feature_modules(t_kind)
        outside = [n for n in t_names if not n.startswith("backbone")]
        if outside:
            raise ConfigError(f"DISTILLER.TEACHER_FEATURES {outside} lie outside the teacher's backbone, "
                              "which is all the teacher runs; pick modules under 'backbone.'.")
        self.s_channels = level_channels(student, s_names)
        size = cfg.MODEL.MIN_SIZE if self.detection else (cfg.DATASET.CROP_SIZE or PROBE_SIZE)
        self.t_shapes = level_shapes(teacher, t_names, size)
        self.t_channels = [shape[0] for shape in self.t_shapes]
        if len(self.s_channels) != len(self.t_channels):
            raise ConfigError(f"The student's feature modules give {len(self.s_channels)} maps and the "
                              f"teacher's {len(self.t_channels)}; name modules giving the same number.")
        self.student_capture = FeatureCapture(student, s_names)
        self.teacher_capture = FeatureCapture(teacher, t_names)

    # -- one step -------------------------------------------------------------------------------
    def student_step(self, image, target) -> Tuple[Dict[str, Tensor], DenseBatch]:
        """The student's task losses and the batch as its backbone saw it."""
        if self.detection:
            task = self.student(image, target)
            image_list, targets = self.transform_capture.pop()[0]
            losses = {name if name.startswith("loss_") else f"loss_{name}": value for name, value in task.items()}
            return losses, DenseBatch(image_list.tensors, targets, [tuple(s) for s in image_list.image_sizes])
        out = self.student(image)
        losses = {"loss_seg": F.cross_entropy(out["out"].float(), target, ignore_index=self.ignore_index)}
        if "aux" in out:
            losses["loss_aux"] = self.aux_weight * F.cross_entropy(out["aux"].float(), target,
                                                                   ignore_index=self.ignore_index)
        return losses, DenseBatch(image, None, [tuple(image.shape[-2:])] * image.size(0))

    @torch.no_grad()
    def teacher_levels(self, tensor: Tensor) -> List[Tensor]:
        """The teacher's captured maps for the batch tensor the student's backbone saw."""
        self.teacher.backbone(tensor)
        return as_levels(self.teacher_capture.pop())

    def forward_train(self, image, target, **batch) -> Tuple[None, Dict[str, Tensor]]:
        losses, dense_batch = self.student_step(image, target)
        if self.teacher is not None:
            s_levels = as_levels(self.student_capture.pop())
            t_levels = self.teacher_levels(dense_batch.tensor)
            losses.update(self.distill(s_levels, t_levels, dense_batch, **batch))
        return None, losses

    def distill(self, s_levels: List[Tensor], t_levels: List[Tensor], batch: DenseBatch, **extra
                ) -> Dict[str, Tensor]:
        raise NotImplementedError

    def forward_test(self, image):
        out = self.student(image)
        for capture in vars(self).values():
            if isinstance(capture, FeatureCapture):
                capture.outputs = {}
        return out if self.detection else out["out"]
