"""Corruption robustness of classifiers: the test sets under the 15 corruptions, and the scores.

Scores, from top-1 accuracy A(c, s) under corruption c at severity s (percent) and the clean A0:

* mPC, the mean performance under corruption (Michaelis et al., 2019, eq. 1): the mean of A(c, s)
  over the corruptions and severities;
* rPC = mPC / A0 (their eq. 2, in percent here);
* mCE against a baseline b (Hendrycks & Dietterich, 2019, section 3): for each corruption
  CE_c = sum_s E(c, s) / sum_s E_b(c, s) with the error E = 100 - A, mCE = the mean of CE_c over
  the corruptions (percent); relative mCE the same with E(c, s) - E0 in both sums (None, shown
  "-", when a baseline sum is 0: the baseline lost nothing on that corruption).

The sets (:func:`pixel_source`) give the images at the size the published corrupted sets have:
CIFAR-100 and Tiny-ImageNet as stored (32 / 64 px), ImageNet after Resize(256) and CenterCrop(224),
the digits at DATASET.IMAGE_SIZE; the rest of the dataset's test transform (resize to the model's
size, normalisation) comes after. The published sets are read where they lie under DATASET.ROOT
(:data:`PUBLISHED_DIRS`): CIFAR-100-C's ``<corruption>.npy`` (5 x 10,000 images, severity 1 first)
beside ``labels.npy``, ImageNet-C's and Tiny-ImageNet-C's ``<corruption>/<severity>/<wnid>/`` trees.
"""

import os
import statistics
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from yacs.config import CfgNode

from mdistiller.dataset.base import dataset_registry, dataset_root, image_size
from mdistiller.errors import ConfigError, DatasetNotFoundError
from mdistiller.experiments.corruptions import FAMILIES, SEVERITIES, CorruptedImages, PixelSource

__all__ = ["PUBLISHED_DIRS", "markdown_tables", "pixel_source", "plot_robustness", "published_set", "summarize"]

# Where the published corrupted test sets lie under DATASET.ROOT.
PUBLISHED_DIRS = {"cifar100": "CIFAR-100-C", "imagenet": "ImageNet-C", "tiny_imagenet": "Tiny-ImageNet-C"}
IMAGENET_C_SIZE = 224


def _tensor_finish(normalize: transforms.Normalize):
    """(H, W, 3) pixels in [0, 255] -> the normalised (3, H, W) tensor, without PIL."""
    return lambda pixels: normalize(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / 255.0)
                                    .permute(2, 0, 1))


def _pil_finish(transform):
    """uint8 (H, W, 3) pixels -> `transform` of the PIL image."""
    return lambda pixels: transform(Image.fromarray(np.asarray(pixels, dtype=np.uint8)))


def pixel_source(cfg: CfgNode) -> PixelSource:
    """The test set of ``cfg.DATASET.TYPE`` as a :class:`PixelSource` (see the module docstring)."""
    kind = cfg.DATASET.TYPE
    _, val_set, _ = dataset_registry.get(kind)(cfg)
    if kind == "cifar100":
        return PixelSource(lambda i: val_set.data[i], val_set.targets, _pil_finish(val_set.transform))
    if kind == "digits":
        images = val_set.images.permute(0, 2, 3, 1).numpy() * 255.0
        return PixelSource(lambda i: images[i], val_set.targets, _tensor_finish(val_set.transform))
    if kind in ("imagenet", "tiny_imagenet"):
        steps = list(val_set.transform.transforms)
        first_tensor = next(i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor))
        before, after = steps[:first_tensor], steps[first_tensor:]
        if kind == "imagenet":  # ImageNet-C's 224 px crops, then the model's size
            before = [transforms.Resize(256), transforms.CenterCrop(IMAGENET_C_SIZE)]
            size = image_size(cfg)
            after = ([transforms.Resize(size)] if size != IMAGENET_C_SIZE else []) + after
        prepare, finish = transforms.Compose(before), _pil_finish(transforms.Compose(after))

        def pixels(index: int) -> np.ndarray:
            path, _ = val_set.samples[index]
            with Image.open(path) as image:
                return np.asarray(prepare(image.convert("RGB")))

        return PixelSource(pixels, val_set.targets, finish)
    raise ConfigError(f"tools/robustness.py knows the test sets of cifar100, imagenet, tiny_imagenet and digits, "
                      f"not '{kind}'.")


class _ArraySeverity:
    """One severity of a CIFAR-100-C array: images [(s - 1) n, s n) of the memory-mapped file."""

    def __init__(self, array: np.ndarray, severity: int, count: int) -> None:
        self.array, self.offset = array, (severity - 1) * count

    def __call__(self, index: int) -> np.ndarray:
        return self.array[self.offset + index]


def published_set(cfg: CfgNode, source: PixelSource, corruption: str, severity: int) -> Optional[Dataset]:
    """The published corrupted test set of `corruption` at `severity` when it is under DATASET.ROOT,
    else None; DatasetNotFoundError when its size or labels disagree with the test set's."""
    kind = cfg.DATASET.TYPE
    if kind not in PUBLISHED_DIRS:
        return None
    root = os.path.join(dataset_root(cfg), PUBLISHED_DIRS[kind])
    count = len(source)
    if kind == "cifar100":
        path = os.path.join(root, f"{corruption}.npy")
        if not os.path.isfile(path):
            return None
        array = np.load(path, mmap_mode="r")
        labels = np.load(os.path.join(root, "labels.npy"))
        if array.shape[0] != len(SEVERITIES) * count or not np.array_equal(labels[:count], source.targets):
            raise DatasetNotFoundError(
                f"{path} holds {array.shape[0]} images (labels {os.path.join(root, 'labels.npy')}): expected "
                f"{len(SEVERITIES)} x {count} in the order of the test set; download CIFAR-100-C again.")
        return CorruptedImages(source, corruption, severity, pixels=_ArraySeverity(array, severity, count))
    folder = os.path.join(root, corruption, str(severity))
    if not os.path.isdir(folder):
        return None
    tree = ImageFolder(folder, transform=lambda image: source.finish(np.asarray(image.convert("RGB"))))
    if len(tree) != count:
        raise DatasetNotFoundError(f"{folder} holds {len(tree)} images, the test set {count}: expected "
                                   f"{PUBLISHED_DIRS[kind]}/<corruption>/<severity>/<wnid>/*.JPEG of every test image.")
    return tree


def summarize(clean: float, accuracy: Mapping[str, Mapping[int, float]],
              baseline: Optional[Mapping] = None) -> Dict:
    """mPC, rPC, the mean per corruption, and with `baseline` (a summary of the baseline's own:
    ``{"clean": A0, "accuracy": {corruption: {severity: A}}}``) mCE and relative mCE (module docstring)."""
    values = [a for per_severity in accuracy.values() for a in per_severity.values()]
    mpc = statistics.fmean(values)
    summary = {"clean": clean, "mPC": mpc, "rPC": 100.0 * mpc / clean if clean else 0.0,
               "per_corruption": {c: statistics.fmean(s.values()) for c, s in accuracy.items()}}
    if baseline is not None:
        ce, relative = [], []
        for corruption, per_severity in accuracy.items():
            base = baseline["accuracy"][corruption]
            error = sum(100.0 - per_severity[s] for s in per_severity)
            base_error = sum(100.0 - base[s] for s in per_severity)
            ce.append(error / base_error if base_error else None)
            gap = sum((100.0 - per_severity[s]) - (100.0 - clean) for s in per_severity)
            base_gap = sum((100.0 - base[s]) - (100.0 - baseline["clean"]) for s in per_severity)
            relative.append(gap / base_gap if base_gap else None)
        # undefined (None) where the baseline loses nothing on some corruption
        summary["mCE"] = None if None in ce else 100.0 * statistics.fmean(ce)
        summary["relative_mCE"] = None if None in relative else 100.0 * statistics.fmean(relative)
    return summary


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_tables(results: Mapping[str, Mapping], metric: str = "top-1") -> str:
    """The summary table (a row per model: clean, mPC, rPC, mCE, the mean of each corruption), then
    a table per model of every corruption and severity. `results`: label -> :func:`summarize` output
    with ``accuracy`` added."""
    from mdistiller.experiments.tables import markdown_table

    first = next(iter(results.values()))
    corruptions = list(first["accuracy"])
    has_mce = any("mCE" in r for r in results.values())
    header = ["model", f"clean {metric}", "mPC", "rPC (%)"] + (["mCE (%)", "rel. mCE (%)"] if has_mce else [])
    rows = [[label, _cell(r["clean"]), _cell(r["mPC"]), _cell(r["rPC"])]
            + ([_cell(r.get("mCE")), _cell(r.get("relative_mCE"))] if has_mce else [])
            + [_cell(r["per_corruption"][c]) for c in corruptions] for label, r in results.items()]
    text = [markdown_table(header + corruptions, rows, "l" + "r" * (len(header) - 1 + len(corruptions)))]
    for label, r in results.items():
        severities = sorted({s for per in r["accuracy"].values() for s in per})
        rows = [[c] + [_cell(r["accuracy"][c].get(s)) for s in severities] + [_cell(r["per_corruption"][c])]
                for c in corruptions]
        text += [f"\n{label}: {metric} per corruption and severity\n",
                 markdown_table(["corruption"] + [f"s{s}" for s in severities] + ["mean"], rows,
                                "l" + "r" * (len(severities) + 1))]
    return "\n".join(t.rstrip("\n") for t in text) + "\n"


def family_curve(result: Mapping, family: str) -> List[float]:
    """The mean over `family`'s corruptions present in `result` at severity 0 (clean), 1, ..."""
    names = [c for c in FAMILIES[family] if c in result["accuracy"]]
    severities = sorted({s for c in names for s in result["accuracy"][c]})
    return [result["clean"]] + [statistics.fmean(result["accuracy"][c][s] for c in names) for s in severities]


def plot_robustness(results: Mapping[str, Mapping], path: str, metric: str = "top-1 (%)", title: str = "") -> None:
    """Accuracy against severity (0 = clean) per corruption family, a line per model, side by side."""
    from mdistiller.experiments.plots import _pyplot, group_colors

    plt = _pyplot()
    first = next(iter(results.values()))
    families = [f for f in FAMILIES if any(c in first["accuracy"] for c in FAMILIES[f])]
    severities = [0] + sorted({s for per in first["accuracy"].values() for s in per})
    fig, axes = plt.subplots(1, len(families), figsize=(3.4 * len(families), 3.4), sharey=True, squeeze=False)
    colors = group_colors(len(results))
    for ax, family in zip(axes[0], families):
        for index, (label, result) in enumerate(results.items()):
            ax.plot(severities, family_curve(result, family), marker="o", ms=3, lw=1.4,
                    color=colors[index % len(colors)], label=f"{label} (mPC {result['mPC']:.1f})")
        ax.set_title(family, fontsize=10)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_xticks(severities)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "accuracy under corruption, mean over each family's corruptions", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

