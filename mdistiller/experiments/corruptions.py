"""The 15 common corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations") at severities 1-5, applied to test sets.

The corruptions are those of the `imagecorruptions` package of Michaelis et al. (2019,
"Benchmarking Robustness in Object Detection"), the one COCO-C, Pascal-C and Cityscapes-C are
built with; its maintained fork ``imagecorruptions-imaug`` is used (same module name and
functions): the original 1.1.2 no longer imports on setuptools without ``pkg_resources``, and its
glass blur (scikit-image's removed ``multichannel``) and fog (NumPy 2's removed ``np.float_``)
fail on today's libraries.

Randomness: each image gets its own seed, ``image_seed(seed, corruption, severity, index)``, so a
result does not depend on the order, the batch size or the loader's workers. The library draws
most of its noise from NumPy's global generator, which is seeded with it before the call; impulse
noise and glass blur take the seed as an argument instead.

Images smaller than the library accepts (:data:`MIN_SIDE`, 32 px: the digits demo's 16 px) are
upsampled bilinearly by the smallest integer factor that reaches it, corrupted there and brought
back to their size by area averaging, so a corruption keeps its spatial extent relative to the image.

Severity 0 is the clean image, through the same pipeline: its accuracy is the clean accuracy.
"""

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CORRUPTIONS", "FAMILIES", "MIN_SIDE", "SEVERITIES", "CorruptedImages", "PixelSource", "corrupt_image",
           "corrupted_tensor", "family_of", "image_seed"]

# Hendrycks & Dietterich's 15 corruptions in their four families (the `common` set of imagecorruptions).
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS: Tuple[str, ...] = tuple(name for names in FAMILIES.values() for name in names)
SEVERITIES: Tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIDE = 32
# The corruptions whose randomness the library takes as a `seed` argument rather than from NumPy's global state.
SEED_ARGUMENT = ("impulse_noise", "glass_blur")


def family_of(corruption: str) -> str:
    """The family (noise, blur, weather, digital) of one of the 15 corruptions."""
    return next(family for family, names in FAMILIES.items() if corruption in names)


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of test image `index` under `corruption` at `severity` (a 32-bit integer)."""
    sequence = np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), severity, index])
    return int(sequence.generate_state(1)[0])


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """`image` (H, W, 3) uint8 under `corruption` at `severity` (1-5), drawn with `seed`: uint8, same shape.

    Images with a side under :data:`MIN_SIDE` are corrupted at an integer multiple of their size
    (see the module docstring).
    """
    from imagecorruptions import corrupt

    height, width = image.shape[:2]
    factor = math.ceil(MIN_SIDE / min(height, width))
    pixels = image
    if factor > 1:
        pixels = np.asarray(Image.fromarray(image).resize((width * factor, height * factor), Image.BILINEAR))
    np.random.seed(seed)
    extra = {"seed": seed} if corruption in SEED_ARGUMENT else {}
    out = corrupt(pixels, severity=severity, corruption_name=corruption, **extra)
    out = np.asarray(out, dtype=np.uint8)[:pixels.shape[0], :pixels.shape[1]]
    if factor > 1:
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.BOX))
    return out


def corrupted_tensor(image: torch.Tensor, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """A (3, H, W) float image in [0, 1] under `corruption` (severity 0: `image` itself)."""
    if severity == 0:
        return image
    pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = corrupt_image(pixels, corruption, severity, seed)
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass
class PixelSource:
    """A test set as pixels before its final transform: `pixels(i)` (H, W, 3), uint8 or float in
    [0, 255], at the size the published corrupted sets have; `finish` makes the model's input of
    them (resize, normalise); `targets` the labels."""

    pixels: Callable[[int], np.ndarray]
    targets: Sequence[int]
    finish: Callable[[np.ndarray], torch.Tensor]

    def __len__(self) -> int:
        return len(self.targets)


class CorruptedImages(Dataset):
    """Items ``(image, target)`` of a :class:`PixelSource` under one corruption and severity.

    Severity 0 gives the clean images; `pixels` is an optional replacement for the source's pixels
    (one severity of a published ``CIFAR-100-C`` array), in which case nothing is corrupted here.
    """

    def __init__(self, source: PixelSource, corruption: str, severity: int, seed: int = 0,
                 pixels: Optional[Callable[[int], np.ndarray]] = None) -> None:
        self.source, self.corruption, self.severity, self.seed = source, corruption, severity, seed
        self.published = pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if self.published is not None:
            pixels = self.published(index)
        else:
            pixels = self.source.pixels(index)
            if self.severity > 0:
                clean = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
                pixels = corrupt_image(clean, self.corruption, self.severity,
                                       image_seed(self.seed, self.corruption, self.severity, index))
        return self.source.finish(pixels), int(self.source.targets[index])


def published_files(root: str, corruption: str) -> Optional[str]:
    """The published file or folder of `corruption` under `root` (CIFAR-100-C's ``<name>.npy``,
    ImageNet-C's ``<name>/``), or None."""
    for path in (os.path.join(root, f"{corruption}.npy"), os.path.join(root, corruption)):
        if os.path.exists(path):
            return path
    return None


def listed(values: Optional[str], known: Sequence, kind: str, parse: Callable = str) -> List:
    """The comma-separated `values` (all of `known` when empty), each checked against `known`."""
    from mdistiller.errors import ConfigError

    if not values:
        return list(known)
    chosen = []
    for text in values.split(","):
        try:
            value = parse(text.strip())
        except ValueError:
            value = None
        if value not in known:
            raise ConfigError(f"Unknown {kind} {text.strip()!r}: pick from {', '.join(map(str, known))}.")
        chosen.append(value)
    return chosen
