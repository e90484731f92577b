"""A stratified, seeded fraction of a training split (``DATASET.TRAIN_FRACTION``).

The small-data setting of knowledge distillation: a teacher trained on the whole split, a student
that sees only a fraction of it, where the teacher's soft targets carry what the missing images
would have taught. The subset keeps each class's share of the split
(``sklearn.model_selection.train_test_split(..., train_size=fraction, stratify=targets)``) and is
drawn from the seed, so runs with the same seed train on the same images.

The subset is taken inside the dataset's own storage (the image array of an in-memory set, the file
list of an ImageFolder), so the in-memory batched loader (``DATASET.FAST_AUG``) and CRD's
per-class sampling see an ordinary, smaller dataset.
"""

from typing import List

import numpy as np
import torch
from torch.utils.data import Dataset

from mdistiller.errors import ConfigError

__all__ = ["stratified_indices", "keep_items"]


def stratified_indices(targets: List[int], fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of the items labelled `targets`, drawn with `seed`.

    Raises ConfigError when the fraction is outside (0, 1] or leaves a class without an item.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"DATASET.TRAIN_FRACTION must be in (0, 1], got {fraction}.")
    indices = np.arange(len(targets))
    if fraction == 1.0:
        return indices
    labels = np.asarray(targets)
    classes = len(np.unique(labels))
    if round(fraction * len(labels)) < classes:
        raise ConfigError(f"DATASET.TRAIN_FRACTION {fraction} keeps {round(fraction * len(labels))} of "
                          f"{len(labels)} training images, fewer than the {classes} classes; raise it to at least "
                          f"{classes / len(labels):.4f}.")
    from sklearn.model_selection import train_test_split   # here, not with the package (see digits_split)

    try:
        kept, _ = train_test_split(indices, train_size=fraction, stratify=labels, random_state=seed)
    except ValueError as err:  # e.g. a class with a single image cannot be split
        raise ConfigError(f"DATASET.TRAIN_FRACTION {fraction}: no stratified subset of this split ({err}); "
                          "use 1.0 or a fraction that leaves every class an image.") from None
    return np.sort(kept)


def keep_items(dataset: Dataset, indices: np.ndarray) -> None:
    """Reduce `dataset` in place to the items at `indices`.

    Knows the storage of torchvision's CIFAR sets (``data`` array), the in-memory digits set
    (``images`` tensor) and ImageFolder sets (``samples``); ConfigError for any other.
    """
    positions = indices.tolist()
    if isinstance(getattr(dataset, "data", None), np.ndarray):
        dataset.data = dataset.data[indices]
    elif isinstance(getattr(dataset, "images", None), torch.Tensor):
        dataset.images = dataset.images[torch.from_numpy(indices)]
    elif isinstance(getattr(dataset, "samples", None), list):
        dataset.samples = [dataset.samples[i] for i in positions]
        if hasattr(dataset, "imgs"):
            dataset.imgs = dataset.samples
    else:
        raise ConfigError(f"DATASET.TRAIN_FRACTION cannot subset a {type(dataset).__name__} (it knows CIFAR, "
                          "digits and ImageFolder sets); leave it at 1.0 for this dataset.")
    dataset.targets = [dataset.targets[i] for i in positions]
