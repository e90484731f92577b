"""FGD on dense features: Yang et al., CVPR 2022 (math: mdistiller/losses/fgd.py)."""

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError
from mdistiller.losses.fgd import FGDLoss, fgd_masks
from mdistiller_dense.distillers._base import DenseDistiller, align_convs, register_dense_distiller, select_levels

FGD_DEFAULTS = CN()
FGD_DEFAULTS.TEMPERATURE = 0.5
FGD_DEFAULTS.ALPHA = 1e-3        # foreground; RetinaNet values of the authors' configs
FGD_DEFAULTS.BETA = 5e-4         # background
FGD_DEFAULTS.GAMMA = 5e-4        # attention
FGD_DEFAULTS.LAMBDA = 5e-6       # global relation
FGD_DEFAULTS.LEVELS = 0


@register_dense_distiller("FGD", FGD_DEFAULTS)
class DenseFGD(DenseDistiller):
    """Focal (foreground / background masked by the ground-truth boxes, weighted by the teacher's
    attention), attention and global losses per level, summed into ``loss_kd``. Boxes are those the
    student's transform produced, scaled to each level by the unpadded image size. Detectors only."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, teacher, cfg, **info)
        if not self.detection:
            raise ConfigError("FGD needs ground-truth boxes: use it with a detector.")
        s = cfg.FGD
        channels = select_levels(self.t_channels, s.LEVELS)
        self.align = align_convs(self.s_channels[:len(channels)], channels)
        self.fgd = nn.ModuleList(FGDLoss(c, s.TEMPERATURE, s.ALPHA, s.BETA, s.GAMMA, s.LAMBDA) for c in channels)

    def distill(self, s_levels, t_levels, batch, **extra):
        boxes = [target["boxes"] for target in batch.targets]
        total = 0.0
        for align, loss, s, t in zip(self.align, self.fgd, s_levels, t_levels):
            fg, bg = fgd_masks(boxes, batch.image_sizes, tuple(t.shape[-2:]))
            total = total + sum(loss(align(s), t, fg, bg).values())
        return {"loss_kd": total}
