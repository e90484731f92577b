"""A synthetic "shapes" dataset in COCO detection format and in image + PNG label-map format.

Each image has a random flat background colour with noise and 1..MAX_OBJECTS non-overlapping
coloured rectangles, ellipses and triangles. Categories (COCO ids) 1 rectangle, 2 ellipse,
3 triangle; the label maps hold the category id per pixel and 0 for background. Layout::

    root/annotations/instances_{train,val}.json   COCO: boxes [x, y, w, h] (tight around the mask),
                                                  areas, RLE masks
    root/{train,val}/images/NNNNNN.png
    root/{train,val}/masks/NNNNNN.png
    root/sa1b/{train,val}/sa_NNNNNN/sa_<id>.{png,json}   the same images and masks in SA-1B's layout
                                                  (mdistiller_dense/data/sa1b.py)
    root/shapes.json                              the generator's parameters
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from mdistiller_dense.data.sa1b import write_sa1b

__all__ = ["CATEGORIES", "ShapesSpec", "generate_shapes", "ensure_shapes"]

CATEGORIES = ("rectangle", "ellipse", "triangle")


@dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 200
    num_val: int = 50
    image_size: int = 128
    max_objects: int = 4
    min_object_size: int = 16
    max_object_size: int = 56
    seed: int = 0

    def dirname(self) -> str:
        return (f"shapes_{self.image_size}px_train{self.num_train}_val{self.num_val}_obj{self.max_objects}"
                f"_size{self.min_object_size}-{self.max_object_size}_seed{self.seed}")


def _draw_shape(kind: int, box: Tuple[int, int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one shape filling ``box`` (x0, y0, x1, y1, exclusive ends)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if kind == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=1)
    elif kind == 2:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=1)
    else:
        apex = int(rng.integers(x0, x1))
        draw.polygon([(apex, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _image(spec: ShapesSpec, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
    size = spec.image_size
    background = rng.integers(0, 90, size=3)
    image = np.clip(background + rng.normal(0, 8, size=(size, size, 3)), 0, 255)
    label_map = np.zeros((size, size), dtype=np.uint8)
    objects: List[Dict] = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _attempt in range(20):
            w, h = rng.integers(spec.min_object_size, spec.max_object_size + 1, size=2)
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if not occupied[max(y0 - 2, 0):y0 + h + 2, max(x0 - 2, 0):x0 + w + 2].any():
                break
        else:
            continue
        kind = int(rng.integers(1, len(CATEGORIES) + 1))
        mask = _draw_shape(kind, (x0, y0, x0 + int(w), y0 + int(h)), size, rng)
        if mask.sum() < 4:
            continue
        occupied[y0:y0 + h, x0:x0 + w] = True
        colour = rng.integers(130, 256, size=3)
        image[mask] = colour
        label_map[mask] = kind
        objects.append({"category_id": kind, "mask": mask})
    return image.astype(np.uint8), label_map, objects


def _coco_annotation(obj: Dict, image_id: int, ann_id: int) -> Dict:
    from pycocotools import mask as mask_utils

    ys, xs = np.nonzero(obj["mask"])
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": obj["category_id"], "iscrowd": 0,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(obj["mask"].sum()), "segmentation": rle}


def generate_shapes(root: str, spec: ShapesSpec = ShapesSpec()) -> str:
    """Write the dataset ``spec`` describes into ``root`` (created; must not exist); returns ``root``."""
    rng = np.random.default_rng(spec.seed)
    os.makedirs(os.path.join(root, "annotations"))
    ann_id = 1
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(root, split, sub))
        images, annotations = [], []
        for index in range(count):
            image, label_map, objects = _image(spec, rng)
            file_name = f"{index:06d}.png"
            Image.fromarray(image).save(os.path.join(root, split, "images", file_name))
            Image.fromarray(label_map).save(os.path.join(root, split, "masks", file_name))
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": spec.image_size,
                           "height": spec.image_size})
            for obj in objects:
                annotations.append(_coco_annotation(obj, image_id, ann_id))
                ann_id += 1
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                               for i, name in enumerate(CATEGORIES)]}
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)
    for split in ("train", "val"):
        write_sa1b(os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split, "images"),
                   os.path.join(root, "sa1b", split))
    with open(os.path.join(root, "shapes.json"), "w") as f:
        json.dump(asdict(spec), f, indent=1)
    return root


def ensure_shapes(base: str, spec: ShapesSpec) -> str:
    """``base/<spec.dirname()>``, generated on first use (into a temporary directory, then renamed,
    so a concurrent or interrupted run never sees half a dataset)."""
    root = os.path.join(base, spec.dirname())
    if os.path.isfile(os.path.join(root, "shapes.json")):
        return root
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes_", dir=base)
    try:
        generate_shapes(os.path.join(tmp, "data"), spec)
        try:
            os.replace(os.path.join(tmp, "data"), root)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(root, "shapes.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
