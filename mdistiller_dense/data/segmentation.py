"""Semantic segmentation from an image folder and a folder of PNG label maps (Cityscapes trainIds,
the shapes generator's masks): pixel value = class index, IGNORE_INDEX (255) = not labelled."""

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mdistiller.errors import DatasetNotFoundError

__all__ = ["SegmentationFolder", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pairs(image_dir: str, mask_dir: str, image_suffix: str, mask_suffix: str) -> List[Tuple[str, str]]:
    for path in (image_dir, mask_dir):
        if not os.path.isdir(path):
            raise DatasetNotFoundError(f"Segmentation folder {path} not found: check DATASET.ROOT and "
                                       "DATASET.TRAIN_IMAGES / TRAIN_MASKS / VAL_IMAGES / VAL_MASKS.")
    pairs = []
    for folder, _, files in sorted(os.walk(image_dir)):
        for name in sorted(files):
            if not name.endswith(image_suffix):
                continue
            rel = os.path.relpath(os.path.join(folder, name), image_dir)
            mask = os.path.join(mask_dir, rel[: len(rel) - len(image_suffix)] + mask_suffix)
            if not os.path.isfile(mask):
                raise DatasetNotFoundError(f"No label map {mask} for image {os.path.join(folder, name)}: "
                                           "check DATASET.MASK_SUFFIX.")
            pairs.append((os.path.join(folder, name), mask))
    if not pairs:
        raise DatasetNotFoundError(f"No images ending in '{image_suffix}' under {image_dir}.")
    return pairs


class SegmentationFolder(Dataset):
    """``(image, label map)``: the image normalised with the ImageNet mean and std, the map int64.

    Training augmentation (mmsegmentation's): random scale in ``scale_range``, random crop of
    ``crop_size`` (0: none; padded with 0 / ``ignore_index`` when smaller), horizontal flip.
    """

    def __init__(self, image_dir: str, mask_dir: str, image_suffix: str = ".png", mask_suffix: str = ".png",
                 train: bool = False, flip_prob: float = 0.0, scale_range: Sequence[float] = (1.0, 1.0),
                 crop_size: int = 0, ignore_index: int = 255, num_images: int = 0) -> None:
        pairs = _pairs(image_dir, mask_dir, image_suffix, mask_suffix)
        self.pairs = pairs[:num_images] if num_images > 0 else pairs
        self.train, self.flip_prob, self.crop_size = train, flip_prob, crop_size
        self.scale_range, self.ignore_index = tuple(scale_range), ignore_index
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def _augment(self, image: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        low, high = self.scale_range
        if (low, high) != (1.0, 1.0):
            scale = float(torch.empty(()).uniform_(low, high))
            size = [max(int(round(s * scale)), 1) for s in image.shape[-2:]]
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.crop_size > 0:
            pad_h, pad_w = max(self.crop_size - image.shape[1], 0), max(self.crop_size - image.shape[2], 0)
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            top = int(torch.randint(0, image.shape[1] - self.crop_size + 1, ()))
            left = int(torch.randint(0, image.shape[2] - self.crop_size + 1, ()))
            image = image[:, top:top + self.crop_size, left:left + self.crop_size]
            mask = mask[top:top + self.crop_size, left:left + self.crop_size]
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0)
        image = image.permute(2, 0, 1)
        mask = torch.from_numpy(np.asarray(Image.open(mask_path), dtype=np.int64))
        if self.train:
            image, mask = self._augment(image, mask)
        return (image - self.mean) / self.std, mask
