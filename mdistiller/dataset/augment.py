"""The transformer recipe's augmentation for ImageFolder sets (ImageNet, Tiny-ImageNet) and CIFAR-100, from timm.

DeiT-style training adds to a dataset's geometric steps timm's RandAugment
(``DATASET.RAND_AUGMENT``, a timm string such as ``rand-m9-mstd0.5-inc1``: 2 operations of mean
magnitude 9 out of 10, magnitude noise 0.5, increasing severity) before the tensor conversion, and
timm's RandomErasing (``DATASET.RANDOM_ERASING``: the probability of replacing one random
rectangle of the normalised image by per-pixel Gaussian noise, Zhong et al., AAAI 2020) after the
normalisation. ``DATASET.INTERPOLATION`` (bilinear or bicubic) is the resampling of every resize,
crop and RandAugment geometric operation. With the keys at their defaults the transform is the
dataset's own MDistiller pipeline.
"""

from typing import List, Optional, Sequence

from torchvision import transforms
from yacs.config import CfgNode

from mdistiller.errors import ConfigError

__all__ = ["INTERPOLATIONS", "interpolation_mode", "train_transform"]

INTERPOLATIONS = ("bilinear", "bicubic")


def interpolation_mode(cfg: Optional[CfgNode]) -> transforms.InterpolationMode:
    """``DATASET.INTERPOLATION`` as torchvision's mode (bilinear without a config); ConfigError
    naming the choices for another name."""
    name = cfg.DATASET.get("INTERPOLATION", "bilinear") if cfg is not None else "bilinear"
    if name not in INTERPOLATIONS:
        raise ConfigError(f"DATASET.INTERPOLATION '{name}' is not one of {', '.join(INTERPOLATIONS)}; set one of them.")
    return transforms.InterpolationMode(name)


def train_transform(geometric: Sequence, cfg: Optional[CfgNode], size: int, mean: Sequence[float],
                    std: Sequence[float]) -> transforms.Compose:
    """`geometric` steps (on PIL images), RandAugment, ToTensor, Normalize, RandomErasing: the
    first and last timm's, each only when `cfg` sets its key (see the module docstring)."""
    steps: List = list(geometric)
    dataset = cfg.DATASET if cfg is not None else CfgNode()
    rand_augment = dataset.get("RAND_AUGMENT", "")
    if rand_augment:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        if not rand_augment.startswith("rand"):
            raise ConfigError(f"DATASET.RAND_AUGMENT '{rand_augment}' is not a timm RandAugment string; "
                              "use e.g. rand-m9-mstd0.5-inc1, or '' for none.")
        hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean),
                       interpolation=str_to_pil_interp(interpolation_mode(cfg).value))
        steps.append(rand_augment_transform(rand_augment, hparams))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    erasing = float(dataset.get("RANDOM_ERASING", 0.0))
    if erasing > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(erasing, mode="pixel", device="cpu"))
    return transforms.Compose(steps)
