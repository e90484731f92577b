"""Mixup, CutMix and label smoothing on a training batch, through timm's ``Mixup``.

The trainer mixes a batch once, before the distiller: the student and the teacher see the same
mixed images, and the target becomes the (B, K) mixture of the two samples' (smoothed) one-hot
labels, which ``F.cross_entropy`` takes as it is. Label smoothing alone turns the labels into
smoothed one-hot targets the same way. timm's Mixup pairs each sample with the batch reversed, so
the batch size must be even; :func:`check_mixing` refuses an odd one before training starts.
"""

from typing import Optional, Tuple

from torch import Tensor
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

__all__ = ["MIXUP_MODES", "BatchMixer", "build_mixer", "check_mixing"]

MIXUP_MODES = ("batch", "pair", "elem")  # timm's Mixup: one lambda per batch, per pair, per sample


class BatchMixer:
    """``(image, labels) -> (mixed image, (B, K) soft target)`` for mixup / cutmix / smoothing."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, mode: str = "batch",
                 label_smoothing: float = 0.0) -> None:
        from timm.data import Mixup

        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixes = mixup_alpha > 0 or cutmix_alpha > 0
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
                           switch_prob=switch_prob, mode=mode, label_smoothing=label_smoothing,
                           num_classes=num_classes) if self.mixes else None

    def __call__(self, image: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        if self.mixup is not None:
            return self.mixup(image, target)
        from timm.data.mixup import mixup_target

        return image, mixup_target(target, self.num_classes, lam=1.0, smoothing=self.label_smoothing)


def check_mixing(cfg: CN) -> None:
    """ConfigError, with the fix, for a batch size that mixup / cutmix cannot pair."""
    mixes = cfg.MIXUP.ALPHA > 0 or cfg.MIXUP.CUTMIX > 0
    if mixes and cfg.SOLVER.BATCH_SIZE % 2:
        raise ConfigError(
            f"Mixup / CutMix pair each image with another of its batch: SOLVER.BATCH_SIZE "
            f"{cfg.SOLVER.BATCH_SIZE} is odd; set an even batch size."
        )


def build_mixer(cfg: CN, num_classes: int) -> Optional[BatchMixer]:
    """The run's mixer, or None when MIXUP and SOLVER.LABEL_SMOOTHING are off."""
    section = cfg.MIXUP
    if section.ALPHA <= 0 and section.CUTMIX <= 0 and cfg.SOLVER.LABEL_SMOOTHING <= 0:
        return None
    check_mixing(cfg)
    return BatchMixer(num_classes, section.ALPHA, section.CUTMIX, section.PROB, section.SWITCH_PROB,
                      section.MODE, cfg.SOLVER.LABEL_SMOOTHING)
