"""scikit-learn's bundled 8x8 handwritten digits: a real dataset that needs no download.

1797 grey images with values 0..16 in 10 classes, split once into train / test by
``train_test_split(test_size=0.2, stratify=labels, random_state=0)`` (the split never depends on
``EXPERIMENT.SEED``). Images are scaled to [0, 1], resized bilinearly to ``DATASET.IMAGE_SIZE``,
repeated to 3 channels and normalised with the train split's mean / std. Training adds a random
crop with ``IMAGE_SIZE // 8`` zero padding (no flip: digits are not mirror-symmetric). The whole
set lives in memory as tensors.
"""

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import transforms
from yacs.config import CfgNode

from mdistiller.dataset.base import InstanceDataset, dataset_registry, image_size

__all__ = ["DIGITS_SPLIT_SEED", "DigitsDataset", "build_digits", "digits_split"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


class DigitsDataset(Dataset):
    """In-memory images ``(N, 3, S, S)`` in [0, 1] and integer labels; items ``(image, target)``."""

    def __init__(
        self, images: torch.Tensor, targets: List[int], transform: Optional[Callable] = None
    ) -> None:
        if images.ndim != 4 or images.shape[0] != len(targets):
            raise ValueError(
                f"expected (N, C, H, W) images for {len(targets)} targets, "
                f"got {tuple(images.shape)}"
            )
        self.images = images
        self.targets = list(targets)
        self.classes = [str(digit) for digit in range(10)]
        self.transform = transform

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __len__(self) -> int:
        return len(self.targets)


def digits_split() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split: ``(train_images, test_images, train_labels, test_labels)``.

    Images are ``float64`` arrays ``(N, 8, 8)`` with values 0..16, labels ``int64``. scikit-learn is
    imported here, not with the package: every tool would start ~0.6 s later for the digits alone.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return train_test_split(
        digits.images,
        digits.target,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )


def _to_tensor_images(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> (N, 3, size, size) float32 in [0, 1]."""
    tensor = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    if tensor.shape[-1] != size:
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return tensor.clamp_(0.0, 1.0).repeat(1, 3, 1, 1).contiguous()


@dataset_registry.register("digits")
def build_digits(cfg: CfgNode):
    """``(train_set, val_set, 10)`` at ``DATASET.IMAGE_SIZE`` pixels; train items carry an index."""
    size = image_size(cfg)
    train_images, test_images, train_labels, test_labels = digits_split()
    train_tensor = _to_tensor_images(train_images, size)
    test_tensor = _to_tensor_images(test_images, size)
    mean, std = train_tensor.mean().item(), train_tensor.std().item()
    normalize = transforms.Normalize((mean,) * 3, (std,) * 3)
    train_transform = transforms.Compose(
        [transforms.RandomCrop(size, padding=size // 8), normalize]
    )
    train_set = DigitsDataset(train_tensor, train_labels.tolist(), train_transform)
    val_set = DigitsDataset(test_tensor, test_labels.tolist(), normalize)
    return InstanceDataset(train_set), val_set, 10
