"""Pieces shared by every dataset: the registry, the indexed train-set wrapper, path helpers.

Every builder registered in :data:`dataset_registry` is a function ``(cfg) -> (train_set, val_set,
num_classes)``. Train items are ``(image, target, index)`` (:class:`InstanceDataset` adds the
index), validation items ``(image, target)``, as in MDistiller.

Seam for CRD-style instance sampling: every base train set exposes ``targets`` (one ``int`` label
per item) and the builders wrap it in :class:`InstanceDataset` last, so a contrastive sampler can
wrap ``train_set.dataset`` (or ``train_set``) instead without touching the builders.
"""

import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder
from yacs.config import CfgNode

from mdistiller.errors import ConfigError, DatasetNotFoundError, UnreadableImageError
from mdistiller.registry import Registry

__all__ = ["STANDARD_IMAGE_SIZE", "dataset_registry", "InstanceDataset", "ReadableImageFolder",
           "UnreadableImageWarning", "collate_readable", "dataset_root", "image_size", "load_image_folder_pair"]

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


class UnreadableImageWarning(UserWarning):
    """An image file skipped because it cannot be decoded (DATASET.SKIP_UNREADABLE True)."""


# What PIL raises for a file it cannot decode: unknown format (UnidentifiedImageError is an
# OSError), truncated data (OSError), a broken PNG chunk (SyntaxError), bad header values (ValueError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError)


class ReadableImageFolder(ImageFolder):
    """An :class:`~torchvision.datasets.ImageFolder` that names an image file it cannot decode.

    By default such a file raises :class:`~mdistiller.errors.UnreadableImageError`; with
    `skip_unreadable` it gives a :class:`UnreadableImageWarning` naming the file and an item whose
    image is None, which :func:`collate_readable` leaves out of its batch.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_unreadable: bool = False) -> None:
        super().__init__(root, transform=transform)
        self.skip_unreadable = skip_unreadable

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            if not self.skip_unreadable:
                raise UnreadableImageError(
                    f"Cannot read image {path} ({reason}); replace or delete the file, or set "
                    "DATASET.SKIP_UNREADABLE True to skip unreadable images with a warning."
                ) from None
            warnings.warn(f"Skipping unreadable image {path} ({reason}).", UnreadableImageWarning)
            return None, target
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


def collate_readable(items: Sequence[Any]) -> Any:
    """``default_collate`` of the items, leaving out those whose image (first element) is None."""
    kept = [item for item in items if not (isinstance(item, (tuple, list)) and item[0] is None)]
    if not kept:
        raise UnreadableImageError(f"All {len(items)} images of a batch are unreadable (see the warnings "
                                   "above): check the dataset files.")
    return default_collate(kept)


def dataset_root(cfg: CfgNode) -> Path:
    """``cfg.DATASET.ROOT`` as an absolute path (relative paths resolve against the working dir)."""
    return Path(cfg.DATASET.ROOT).expanduser().absolute()


def image_size(cfg: CfgNode) -> int:
    """``cfg.DATASET.IMAGE_SIZE``, or when it is 0 the standard input size of ``DATASET.TYPE``."""
    size = int(cfg.DATASET.IMAGE_SIZE)
    if size > 0:
        return size
    if cfg.DATASET.TYPE not in STANDARD_IMAGE_SIZE:
        dataset_registry.get(cfg.DATASET.TYPE)  # an unknown name fails first, listing the known ones
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
    skip_unreadable: bool = False,
) -> Tuple[ImageFolder, ImageFolder]:
    """Train and val :class:`ReadableImageFolder` sets with one-line errors (`skip_unreadable`: see there).

    Raises :class:`DatasetNotFoundError` naming the expected ``layout`` when a directory is missing
    or holds no class folder / image, and when val's class folders differ from train's (the labels
    would silently disagree otherwise).
    """
    sets = []
    for split_dir, transform in ((train_dir, train_transform), (val_dir, val_transform)):
        if not split_dir.is_dir():
            raise DatasetNotFoundError(f"{name} not found at {split_dir}: expected {layout}")
        try:
            sets.append(ReadableImageFolder(str(split_dir), transform=transform, skip_unreadable=skip_unreadable))
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
