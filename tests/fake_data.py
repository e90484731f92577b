"""Tiny datasets written in the real on-disk formats, for tests that go through the real loaders.

- :func:`write_fake_cifar100`: ``<root>/cifar-100-python/{train,test,meta}`` pickles with the keys
  of the official files (``data`` as uint8 rows of 3072 = R, G, B planes of 32x32, ``fine_labels``,
  ``coarse_labels``, ``filenames``, ``batch_label``; meta ``fine_label_names`` /
  ``coarse_label_names``). The official files are Python 2 pickles whose ``str`` keys torchvision
  reads back as ``str`` (``encoding="latin1"``); we write ``str`` keys for the same result. Their
  md5 sums differ from the official ones, so loading needs ``MDISTILLER_SKIP_CIFAR_MD5=1``.
- :func:`write_fake_imagenet`: ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``.
- :func:`write_fake_tiny_imagenet`: ``<root>/tiny-imagenet-200/`` with the download's train layout
  (``train/<wnid>/images/*.JPEG`` + ``<wnid>_boxes.txt``, ``wnids.txt``) and either class-folder
  validation (``val/<wnid>/*.JPEG``) or the raw one (``val/images`` + ``val_annotations.txt``).

JPEG files are written by PIL; images are random noise from a seeded generator.
"""

import pickle
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from PIL import Image

PathLike = Union[str, Path]

IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")
TINY_IMAGENET_WNIDS = ("n01443537", "n01629819", "n01641577")


def write_fake_cifar100(
    root: PathLike, num_train: int = 20, num_test: int = 10, seed: int = 0
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Write a tiny CIFAR-100 under ``<root>/cifar-100-python``.

    Returns ``{"train": (images, labels), "test": (images, labels)}`` with images ``uint8``
    ``(N, 32, 32, 3)`` (HWC, as torchvision exposes ``.data``) and labels ``int64`` in 0..99.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, size=count).astype(np.int64)
        entry = {
            "filenames": [f"fake_{split}_{i}.png" for i in range(count)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(count, 3072).copy(),
        }
        with open(folder / split, "wb") as file:
            pickle.dump(entry, file, protocol=2)
        written[split] = (images, fine)
    meta = {
        "fine_label_names": [f"fine_{i}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as file:
        pickle.dump(meta, file, protocol=2)
    return written


def _write_jpeg(path: Path, size: Tuple[int, int], rng: np.random.Generator) -> None:
    width, height = size
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_fake_imagenet(
    root: PathLike,
    wnids: Sequence[str] = IMAGENET_WNIDS,
    train_per_class: int = 3,
    val_per_class: int = 2,
    size: Tuple[int, int] = (48, 40),
    seed: int = 0,
) -> Path:
    """Write ``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` (``size`` is width, height); return the
    ``imagenet`` folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenet"
    for wnid in wnids:
        for i in range(train_per_class):
            _write_jpeg(folder / "train" / wnid / f"{wnid}_{i}.JPEG", size, rng)
        for i in range(val_per_class):
            _write_jpeg(folder / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG", size, rng)
    return folder


def write_fake_tiny_imagenet(
    root: PathLike,
    wnids: Sequence[str] = TINY_IMAGENET_WNIDS,
    train_per_class: int = 3,
    val_per_class: int = 2,
    raw_val: bool = False,
    seed: int = 0,
) -> Path:
    """Write a 64x64 Tiny-ImageNet under ``<root>/tiny-imagenet-200``; return that folder.

    ``raw_val=True`` keeps the download's flat ``val/images`` + ``val_annotations.txt`` layout.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    for wnid in wnids:
        boxes = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            _write_jpeg(folder / "train" / wnid / "images" / name, (64, 64), rng)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    annotations = []
    index = 0
    for wnid in wnids:
        for _ in range(val_per_class):
            name = f"val_{index}.JPEG"
            if raw_val:
                _write_jpeg(folder / "val" / "images" / name, (64, 64), rng)
                annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
            else:
                _write_jpeg(folder / "val" / wnid / name, (64, 64), rng)
            index += 1
    if raw_val:
        (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    return folder
