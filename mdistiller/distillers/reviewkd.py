"""REVIEWKD: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021)."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.measured import measured
from mdistiller.distillers.feature_shapes import feature_shapes, require_preact
from mdistiller.losses.reviewkd import ReviewFusion, hcl_loss

REVIEWKD_DEFAULTS = CN()
REVIEWKD_DEFAULTS.CE_WEIGHT = 1.0
REVIEWKD_DEFAULTS.REVIEWKD_WEIGHT = 1.0
REVIEWKD_DEFAULTS.WARMUP_EPOCHS = 20
REVIEWKD_DEFAULTS.SHAPES = [1, 8, 16, 32]
REVIEWKD_DEFAULTS.OUT_SHAPES = [1, 8, 16, 32]
REVIEWKD_DEFAULTS.IN_CHANNELS = [64, 128, 256, 256]
REVIEWKD_DEFAULTS.OUT_CHANNELS = [64, 128, 256, 256]
REVIEWKD_DEFAULTS.MAX_MID_CHANNEL = 512
REVIEWKD_DEFAULTS.STU_PREACT = False


@register_distiller("REVIEWKD", REVIEWKD_DEFAULTS)
class ReviewKD(Distiller):
    """`loss = CE_WEIGHT * CE + REVIEWKD_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * HCL(fused, teacher)`.

    The student's stage maps (`feats`, or `preact_feats` with STU_PREACT) and its pooled feature
    (as a 1x1 map) are fused deepest first by `abfs` (a :class:`ReviewFusion`) and matched by the
    hierarchical context loss to the teacher's `preact_feats` and pooled feature. Levels pair up
    from the deepest stage; a model with more stages has its shallowest ones left out.

    A teacher without pre-activation maps (a timm / torchvision model through the adapter, whose
    stage ends are not rectified: a transformer's residual stream, a ConvNeXt stage) is matched on
    its `feats` instead; a student without them refuses STU_PREACT.

    Channels and sizes (MDistiller's IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES; the shape lists
    deepest first, the channel lists shallowest first) are measured at DATASET.IMAGE_SIZE; see
    :mod:`mdistiller.distillers.measured`. The fused width is `min(512, student pooled channels)`
    as in MDistiller's code, which does not read MAX_MID_CHANNEL (kept so its YAML files load).
    """

    def __init__(self, student, teacher, cfg, **data_info) -> None:
        super().__init__(student, teacher)
        self.ce_loss_weight = cfg.REVIEWKD.CE_WEIGHT
        self.reviewkd_loss_weight = cfg.REVIEWKD.REVIEWKD_WEIGHT
        self.warmup_epochs = cfg.REVIEWKD.WARMUP_EPOCHS
        self.stu_preact = cfg.REVIEWKD.STU_PREACT
        size = image_size(cfg)
        shapes_s, shapes_t = feature_shapes(student, size), feature_shapes(teacher, size)
        if self.stu_preact:
            require_preact(shapes_s, student, "REVIEWKD.STU_PREACT", "set REVIEWKD.STU_PREACT False")
        self.teacher_maps = "preact_feats" if "preact_feats" in shapes_t else "feats"
        maps_s = shapes_s["preact_feats" if self.stu_preact else "feats"][1:]
        maps_t = shapes_t[self.teacher_maps][1:]
        self.num_stages = min(len(maps_s), len(maps_t))
        maps_s, maps_t = maps_s[-self.num_stages:], maps_t[-self.num_stages:]

        in_channels = measured(cfg, "REVIEWKD.IN_CHANNELS", [s[1] for s in maps_s] + [shapes_s["pooled_feat"][1]])
        out_channels = measured(cfg, "REVIEWKD.OUT_CHANNELS", [s[1] for s in maps_t] + [shapes_t["pooled_feat"][1]])
        measured(cfg, "REVIEWKD.SHAPES", [1] + [s[2] for s in reversed(maps_s)])
        measured(cfg, "REVIEWKD.OUT_SHAPES", [1] + [s[2] for s in reversed(maps_t)])
        out_shapes = [tuple(s[2:]) for s in maps_t] + [(1, 1)]
        self.abfs = ReviewFusion(in_channels, min(512, in_channels[-1]), out_channels, out_shapes)

    def student_levels(self, features: dict) -> list:
        maps = features["preact_feats" if self.stu_preact else "feats"][-self.num_stages:]
        return maps + [features["pooled_feat"][:, :, None, None]]

    def teacher_levels(self, features: dict) -> list:
        return features[self.teacher_maps][-self.num_stages:] + [features["pooled_feat"][:, :, None, None]]

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, epoch: int, **batch):
        logits_student, features_student = self.student(image)
        _, features_teacher = self.teacher_forward(image)
        fused = self.abfs(self.student_levels(features_student))
        ramp = min(epoch / self.warmup_epochs, 1.0)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.reviewkd_loss_weight * ramp * hcl_loss(fused, self.teacher_levels(features_teacher)),
        }
        return logits_student, losses
