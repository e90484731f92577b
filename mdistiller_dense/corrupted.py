"""A dense validation set under one corruption, as Michaelis et al. (2019, "Benchmarking Robustness in
Object Detection") build COCO-C, Pascal-C and Cityscapes-C: every validation image through one of the
15 corruptions of :mod:`mdistiller.experiments.corruptions` at one severity, the boxes and label maps
unchanged (no corruption moves pixels far enough to shift them: elastic transform and zoom blur keep
the geometry to a few pixels, as in their benchmark).
"""

from typing import Any, Tuple

import torch
from torch.utils.data import Dataset

from mdistiller.experiments.corruptions import corrupted_tensor, image_seed
from mdistiller_dense.data.segmentation import SegmentationFolder

__all__ = ["CorruptedDense"]


class CorruptedDense(Dataset):
    """Items of `dataset` (a CocoDetection: images in [0, 1]; a SegmentationFolder: normalised
    images) with the image corrupted; severity 0 gives the items unchanged. Other attributes
    (``coco``, ``ids``, ``cat_ids``) are the wrapped set's, for the evaluation."""

    def __init__(self, dataset: Dataset, corruption: str, severity: int, seed: int = 0) -> None:
        self.dataset, self.corruption, self.severity, self.seed = dataset, corruption, severity, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Any]:
        image, target = self.dataset[index]
        if self.severity == 0:
            return image, target
        seed = image_seed(self.seed, self.corruption, self.severity, index)
        if isinstance(self.dataset, SegmentationFolder):
            mean, std = self.dataset.mean, self.dataset.std
            pixels = corrupted_tensor(image * std + mean, self.corruption, self.severity, seed)
            return (pixels - mean) / std, target
        return corrupted_tensor(image, self.corruption, self.severity, seed), target
