"""SA-1B's layout (Kirillov et al., "Segment Anything", ICCV 2023): per image a picture and a JSON of
its masks, in shard folders::

    root/sa_000000/sa_1.jpg
    root/sa_000000/sa_1.json   {"image": {"image_id", "width", "height", "file_name"},
                                "annotations": [{"id", "bbox": [x, y, w, h], "area",
                                                 "segmentation": {"size": [h, w], "counts": RLE}, ...}]}
    root/sa_000001/...

(a root holding the JSON files itself works too). Masks are COCO run-length encodings, decoded
with pycocotools. An item is the image resized as SAM's ``ResizeLongestSide`` (longest side to
``image_size``) and zero-padded at the bottom and right to ``image_size`` square, as uint8, and a
target dict: ``masks`` (n, image_size, image_size) uint8 at that resolution, ``boxes`` (n, 4) xyxy in
the same coordinates, ``size`` (the resized image's h, w before padding) and ``key`` (the image's
path relative to the root, which names its teacher embedding). Training items draw at most
``masks_per_image`` masks at random (torch's RNG); validation items keep the first that many (0: all).
:func:`write_sa1b` writes a COCO-format set (the shapes set) in this layout.
"""

import glob
import json
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mdistiller.errors import DatasetNotFoundError

__all__ = ["SA1BFolder", "sam_collate", "write_sa1b", "ensure_sa1b", "SHARD_SIZE"]

SHARD_SIZE = 100  # images per shard folder written by write_sa1b (SA-1B's own shards hold ~11k)


class SA1BFolder(Dataset):
    """The images and masks of an SA-1B-layout folder (module docstring)."""

    def __init__(self, root: str, image_size: int, train: bool, masks_per_image: int = 0, num_images: int = 0) -> None:
        files = sorted(glob.glob(os.path.join(root, "*.json")) + glob.glob(os.path.join(root, "*", "*.json")))
        if not files:
            raise DatasetNotFoundError(f"No SA-1B annotation files (*.json) under {root}; set DATASET.ROOT and "
                                       "DATASET.TRAIN_IMAGES / VAL_IMAGES to folders of sa_*/ shards.")
        self.root, self.files = root, files[:num_images] if num_images > 0 else files
        self.image_size, self.train, self.masks_per_image = image_size, train, masks_per_image

    def __len__(self) -> int:
        return len(self.files)

    def resize(self, height: int, width: int) -> Tuple[int, int]:
        """SAM's ResizeLongestSide: the longest side to image_size, rounded."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def annotations(self, index: int) -> Tuple[Dict, List[Dict]]:
        with open(self.files[index]) as f:
            record = json.load(f)
        return record["image"], [a for a in record["annotations"] if a["area"] > 0]

    def pick(self, count: int) -> List[int]:
        limit = self.masks_per_image
        if limit <= 0 or count <= limit:
            return list(range(count))
        if self.train:
            return sorted(torch.randperm(count)[:limit].tolist())
        return list(range(limit))

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        from pycocotools import mask as mask_utils

        info, anns = self.annotations(index)
        path = os.path.join(os.path.dirname(self.files[index]), info["file_name"])
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        height, width = image.shape[-2:]
        new_h, new_w = self.resize(height, width)
        side = self.image_size
        image = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
        image = F.pad(image, (0, side - new_w, 0, side - new_h))
        anns = [anns[i] for i in self.pick(len(anns))]
        masks = torch.zeros(len(anns), side, side, dtype=torch.uint8)
        if anns:
            decoded = torch.from_numpy(mask_utils.decode([a["segmentation"] for a in anns])).permute(2, 0, 1)
            masks[:, :new_h, :new_w] = F.interpolate(decoded[None].float(), size=(new_h, new_w),
                                                     mode="nearest")[0].to(torch.uint8)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes *= torch.tensor([new_w / width, new_h / height] * 2)
        key = os.path.relpath(self.files[index], self.root)
        return image, {"masks": masks, "boxes": boxes, "size": torch.tensor([new_h, new_w]), "key": key}


def sam_collate(batch):
    """(B, 3, S, S) uint8 images and the list of target dicts (mask counts differ per image)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def write_sa1b(coco_json: str, image_dir: str, out: str, shard_size: int = SHARD_SIZE) -> str:
    """A COCO instance set (RLE masks) rewritten in SA-1B's layout under `out`: image k (COCO order)
    as ``sa_{id:06d}/sa_{image id}{ext}`` with shard id ``k // shard_size``; returns `out`."""
    with open(coco_json) as f:
        coco = json.load(f)
    per_image: Dict[int, List[Dict]] = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for k, image in enumerate(coco["images"]):
        shard = os.path.join(out, f"sa_{k // shard_size:06d}")
        os.makedirs(shard, exist_ok=True)
        name = f"sa_{image['id']}{os.path.splitext(image['file_name'])[1]}"
        shutil.copyfile(os.path.join(image_dir, image["file_name"]), os.path.join(shard, name))
        anns = [{"id": a["id"], "bbox": a["bbox"], "area": a["area"], "segmentation": a["segmentation"]}
                for a in per_image.get(image["id"], [])]
        record = {"image": {"image_id": image["id"], "width": image["width"], "height": image["height"],
                            "file_name": name}, "annotations": anns}
        with open(os.path.join(shard, os.path.splitext(name)[0] + ".json"), "w") as f:
            json.dump(record, f)
    return out


def ensure_sa1b(shapes_root: str) -> str:
    """``shapes_root/sa1b`` (train / val in SA-1B's layout), written from the COCO files on first use
    (into a temporary folder, then renamed: a concurrent run never sees half of it)."""
    target = os.path.join(shapes_root, "sa1b")
    if os.path.isdir(target):
        return target
    tmp = tempfile.mkdtemp(prefix=".sa1b_", dir=shapes_root)
    try:
        for split in ("train", "val"):
            write_sa1b(os.path.join(shapes_root, "annotations", f"instances_{split}.json"),
                       os.path.join(shapes_root, split, "images"), os.path.join(tmp, split))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
