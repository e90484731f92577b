"""Instance sampling for CRD: each train item also carries the indices of its contrastive samples.

:class:`ContrastiveInstanceDataset` wraps any dataset of ``(image, target)`` items that exposes
``targets`` (CIFAR-100, ImageFolder sets, digits) and yields ``(image, target, index,
contrastive_index)``, where ``contrastive_index`` is a LongTensor of ``k + 1`` dataset indices: the
positive first, then ``k`` negatives drawn from the other classes. It plays the part of
MDistiller's ``CIFAR100InstanceSample`` / ``ImageNetInstanceSample``:

- ``mode="exact"``: the positive is the item itself; ``"relax"``: a random item of the same class.
- ``always_replace``: negatives always drawn with replacement (MDistiller's ImageNet /
  Tiny-ImageNet sets), or else without replacement unless ``k`` exceeds the pool (MDistiller's
  CIFAR-100 set).
- ``percent`` in (0, 1): each class draws its negatives from a fixed random subset of
  ``int(percent * negatives of class 0)`` items, chosen once at construction.

Negatives are drawn from the items sorted by class, skipping the anchor's block, so no per-class
list of negatives is materialised (MDistiller's lists take N x classes integers: 5 GB on
ImageNet). Draws use torch's generator (seeded per DataLoader worker).
"""

from typing import Any, Tuple

import torch
from torch.utils.data import Dataset

from mdistiller.errors import ConfigError

__all__ = ["CRD_MODES", "ContrastiveInstanceDataset"]

CRD_MODES = ("exact", "relax")


class ContrastiveInstanceDataset(Dataset):
    """Items ``(image, target, index, contrastive_index)``; see the module docstring."""

    def __init__(self, dataset: Dataset, k: int, mode: str = "exact", percent: float = 1.0,
                 always_replace: bool = False) -> None:
        if mode not in CRD_MODES:
            raise ConfigError(f"CRD.MODE must be one of {', '.join(CRD_MODES)}, got '{mode}'.")
        if k < 1:
            raise ConfigError(f"CRD.NCE.K must be at least 1, got {k}.")
        self.dataset = dataset
        self.k = int(k)
        self.mode = mode
        self.always_replace = always_replace
        labels = torch.as_tensor(list(dataset.targets), dtype=torch.long)
        num_classes = int(labels.max()) + 1
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.labels = labels
        present = self.counts > 0
        if bool((self.counts[present] == len(labels)).any()):
            raise ValueError("CRD needs at least two classes: every item has the same label")
        self.subsets = None
        if 0.0 < percent < 1.0:
            size = int((len(labels) - int(self.counts[0])) * percent)
            self.subsets = [self._negatives(c, torch.randperm(self._pool(c))[:size]) for c in range(num_classes)]

    def _pool(self, label: int) -> int:
        return len(self.labels) - int(self.counts[label])

    def _negatives(self, label: int, positions: torch.Tensor) -> torch.Tensor:
        """Dataset indices of the items at `positions` of the class-sorted order without `label`."""
        start, count = int(self.starts[label]), int(self.counts[label])
        return self.order[positions + count * (positions >= start)]

    def sample(self, index: int) -> torch.Tensor:
        """The ``k + 1`` contrastive indices of item `index`: positive first, then negatives."""
        label = int(self.labels[index])
        if self.mode == "exact":
            positive = index
        else:
            positive = int(self.order[int(self.starts[label]) + torch.randint(int(self.counts[label]), ()).item()])
        pool = self._pool(label) if self.subsets is None else len(self.subsets[label])
        replace = self.always_replace or self.k > pool
        positions = torch.randint(pool, (self.k,)) if replace else torch.randperm(pool)[: self.k]
        negatives = self._negatives(label, positions) if self.subsets is None else self.subsets[label][positions]
        return torch.cat([torch.tensor([positive]), negatives])

    def __getitem__(self, index: int) -> Tuple[Any, int, int, torch.Tensor]:
        image, target = self.dataset[index]
        return image, target, index, self.sample(index)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self):
        """Labels of the wrapped dataset, one per item."""
        return self.dataset.targets

    @property
    def classes(self):
        """Class names of the wrapped dataset, in label order."""
        return self.dataset.classes

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r}, k={self.k}, mode={self.mode!r})"
