"""Pieces shared by every dataset: the registry, the indexed train-set wrapper, path helpers.

Every builder registered in :data:`dataset_registry` is a function ``(cfg) -> (train_set, val_set,
num_classes)``. Train items are ``(image, target, index)`` (:class:`InstanceDataset` adds the
index), validation items ``(image, target)``, as in MDistiller.

Seam for CRD-style instance sampling: every base train set exposes ``targets`` (one ``int`` label
per item) and the builders wrap it in :class:`InstanceDataset` last, so a contrastive sampler can
wrap ``train_set.dataset`` (or ``train_set``) instead without touching the builders.
"""

from pathlib import Path
from typing import Any, Callable, List, Tuple

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from yacs.config import CfgNode

from mdistiller.errors import ConfigError, DatasetNotFoundError
from mdistiller.registry import Registry

__all__ = ["STANDARD_IMAGE_SIZE", "dataset_registry", "InstanceDataset", "dataset_root", "image_size",
           "load_image_folder_pair"]

dataset_registry = Registry("dataset")

# The input size of each dataset's models (the digits demo resizes its 8x8 images to 16x16).
STANDARD_IMAGE_SIZE = {"cifar100": 32, "imagenet": 224, "tiny_imagenet": 64, "digits": 16}


class InstanceDataset(Dataset):
    """Wraps a dataset of ``(image, target)`` items so that it yields ``(image, target, index)``.

    ``index`` is the item's position in the wrapped dataset; distillers that keep per-sample state
    (memory banks, CRD) key on it.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> Tuple[Any, int, int]:
        image, target = self.dataset[index]
        return image, target, index

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> List[int]:
        """Labels of the wrapped dataset, one per item."""
        return self.dataset.targets

    @property
    def classes(self) -> List[str]:
        """Class names of the wrapped dataset, in label order."""
        return self.dataset.classes

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"


def dataset_root(cfg: CfgNode) -> Path:
    """``cfg.DATASET.ROOT`` as an absolute path (relative paths resolve against the working dir)."""
    return Path(cfg.DATASET.ROOT).expanduser().absolute()


def image_size(cfg: CfgNode) -> int:
    """``cfg.DATASET.IMAGE_SIZE``, or when it is 0 the standard input size of ``DATASET.TYPE``."""
    size = int(cfg.DATASET.IMAGE_SIZE)
    if size > 0:
        return size
    if cfg.DATASET.TYPE not in STANDARD_IMAGE_SIZE:
        raise ConfigError(
            f"DATASET.IMAGE_SIZE is 0 (the dataset's standard size) but '{cfg.DATASET.TYPE}' has none; set it."
        )
    return STANDARD_IMAGE_SIZE[cfg.DATASET.TYPE]


def load_image_folder_pair(
    name: str,
    train_dir: Path,
    val_dir: Path,
    train_transform: Callable,
    val_transform: Callable,
    layout: str,
) -> Tuple[ImageFolder, ImageFolder]:
    """Train and val :class:`~torchvision.datasets.ImageFolder` sets with one-line errors.

    Raises :class:`DatasetNotFoundError` naming the expected ``layout`` when a directory is missing
    or holds no class folder / image, and when val's class folders differ from train's (the labels
    would silently disagree otherwise).
    """
    sets = []
    for split_dir, transform in ((train_dir, train_transform), (val_dir, val_transform)):
        if not split_dir.is_dir():
            raise DatasetNotFoundError(f"{name} not found at {split_dir}: expected {layout}")
        try:
            sets.append(ImageFolder(str(split_dir), transform=transform))
        except FileNotFoundError as error:
            raise DatasetNotFoundError(
                f"{name} at {split_dir} has no usable images ({error}): expected {layout}"
            ) from None
    train_set, val_set = sets
    if val_set.classes != train_set.classes:
        raise DatasetNotFoundError(
            f"{name} class folders differ between {train_dir} ({len(train_set.classes)} classes) "
            f"and {val_dir} ({len(val_set.classes)} classes): expected {layout}"
        )
    return train_set, val_set
