"""COCO-format detection data (annotation JSON + image folder) read through pycocotools."""

import contextlib
import io
import os
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
import numpy as np
from PIL import Image

from mdistiller.errors import DatasetNotFoundError

__all__ = ["CocoDetection", "detection_collate", "load_coco"]


def load_coco(ann_file: str):
    """A quiet ``pycocotools.coco.COCO``; DatasetNotFoundError when the file is missing."""
    if not os.path.isfile(ann_file):
        raise DatasetNotFoundError(f"COCO annotation file {ann_file} not found: check DATASET.ROOT and the "
                                   "DATASET.*_ANNOTATIONS paths (data/README.md), or use DATASET.TYPE shapes.")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


class CocoDetection(Dataset):
    """Images as float tensors in [0, 1] (the detector's transform normalises and resizes) and
    targets ``{"boxes": (n, 4) xyxy, "labels": (n,), "image_id": int}``.

    Category ids map to contiguous labels 1..K (0 is the background of torchvision's detectors).
    Crowd boxes and empty boxes are left out; for training, images without any box are skipped
    (as torchvision's reference scripts do). ``num_images`` > 0 keeps the first images only.
    ``flip_prob``: horizontal flip of image and boxes (training augmentation).
    """

    def __init__(self, image_dir: str, ann_file: str, train: bool = False, flip_prob: float = 0.0,
                 num_images: int = 0) -> None:
        if not os.path.isdir(image_dir):
            raise DatasetNotFoundError(f"COCO image folder {image_dir} not found: check DATASET.ROOT and "
                                       "DATASET.TRAIN_IMAGES / VAL_IMAGES.")
        self.image_dir = image_dir
        self.coco = load_coco(ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.cat_ids)}
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(self._valid(a) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids[:num_images] if num_images > 0 else ids
        self.train = train
        self.flip_prob = flip_prob

    @property
    def num_classes(self) -> int:
        """Categories plus the background."""
        return len(self.cat_ids) + 1

    @staticmethod
    def _valid(ann: Dict) -> bool:
        return not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(os.path.join(self.image_dir, info["file_name"])) as file:
            pixels = np.asarray(file.convert("RGB"), dtype=np.float32)
        image = torch.from_numpy(pixels / 255.0).permute(2, 0, 1).contiguous()
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._valid(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        if self.train and self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)
            width = image.shape[-1]
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(image_id)}


def detection_collate(batch: List) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    images, targets = zip(*batch)
    return list(images), list(targets)
