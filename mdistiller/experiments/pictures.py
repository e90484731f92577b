"""The pictures of the papers (tools/visualize.py): feature saliency, frequency PoIs, Grad-CAM grids,
confusion matrices and metric curves; the math they show and the figures.

* Saliency, FreeKD supplement eq. 15-16 (Zhang et al., CVPR 2024, after DiffKD): a map X (C, H, W)
  averaged over its channels, X' = (1/C) sum_c X_c, then V = H W softmax(X' / tau) over the H W
  positions (tau = 0.5): 1 where the saliency is uniform, above 1 where it concentrates.
* Confusion: rows the true class, normalised to sum 1 (FreeKD supplement C, CanKD supplement 6);
  the diagonal gain of one model over another is the difference of their diagonals.

Every figure is a grid of square cells of :data:`CELL` inches at :data:`DPI` dots per inch, with
a title band of :data:`TITLE` inches: a grid of R rows and C columns is ``C * CELL * DPI`` pixels
wide and ``(R * CELL + TITLE) * DPI`` high (the curves: :data:`CURVES_SIZE` inches).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from mdistiller.experiments.plots import _pyplot, group_colors, metric_label

__all__ = ["CELL", "CURVES_SIZE", "DPI", "TITLE", "diagonal_gain", "grid_size", "normalized_confusion",
           "metric_label", "plot_confusions", "plot_grid", "plot_metric_curves", "saliency"]

CELL, TITLE, DPI = 1.6, 0.5, 100
CURVES_SIZE = (7.0, 4.2)


def saliency(features: Tensor, tau: float = 0.5) -> Tensor:
    """FreeKD eq. 15-16: (B, C, H, W) maps -> (B, H, W) saliency ``H W softmax(mean_c X / tau)``."""
    batch, _, height, width = features.shape
    mean = features.float().mean(dim=1).flatten(1)
    return (height * width * torch.softmax(mean / tau, dim=1)).view(batch, height, width)


def normalized_confusion(counts: np.ndarray) -> np.ndarray:
    """A (K, K) count matrix (rows true, columns predicted) with each non-empty row divided by its sum."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def diagonal_gain(model: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per class, the normalised diagonal of `model` minus that of `other` (both normalised matrices)."""
    return np.diagonal(model) - np.diagonal(other)


def grid_size(rows: int, columns: int) -> Tuple[int, int]:
    """(width, height) in pixels of a grid figure (module docstring)."""
    return int(round(columns * CELL * DPI)), int(round((rows * CELL + TITLE) * DPI))


def _figure(rows: int, columns: int, title: str):
    plt = _pyplot()
    width, height = columns * CELL, rows * CELL + TITLE
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    fig.suptitle(title, fontsize=9, y=1 - 0.15 * TITLE / height)
    top = 1 - TITLE / height
    axes = fig.subplots(rows, columns, squeeze=False,
                        gridspec_kw=dict(left=0.01, right=0.99, bottom=0.01, top=top - 0.02, wspace=0.08,
                                         hspace=0.25))
    return plt, fig, axes


def display_image(image: Tensor) -> np.ndarray:
    """A (3, H, W) network input as a displayable (H, W, 3) array in [0, 1] (each image stretched)."""
    pixels = image.detach().float().permute(1, 2, 0).cpu().numpy()
    low, high = pixels.min(), pixels.max()
    return (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)


def plot_grid(images: Sequence[Tensor], columns: Mapping[str, Sequence[np.ndarray]], path: str, title: str,
              overlay: bool = False, cmap: str = "jet") -> Tuple[int, int]:
    """A row per image: the image, then one cell per named column (a (h, w) map per image), each
    column on its own colour scale. `overlay`: the maps are drawn over the image (Grad-CAM)."""
    plt, fig, axes = _figure(len(images), 1 + len(columns), title)
    for row, image in enumerate(images):
        shown = display_image(image)
        axes[row][0].imshow(shown, interpolation="nearest")
        if row == 0:
            axes[row][0].set_title("input", fontsize=7)
        for col, (name, maps) in enumerate(columns.items(), start=1):
            ax = axes[row][col]
            values = np.asarray(maps[row])
            high = max(float(np.max(np.stack([np.max(m) for m in maps]))), 1e-12)
            if overlay:
                ax.imshow(shown, interpolation="nearest")
                ax.imshow(values, cmap=cmap, alpha=0.5, vmin=0, vmax=high, interpolation="bilinear",
                          extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
            else:
                ax.imshow(values, cmap=cmap, vmin=0, vmax=high, interpolation="nearest")
            if row == 0:
                ax.set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return grid_size(len(images), 1 + len(columns))


def plot_confusions(matrices: Mapping[str, np.ndarray], gain: np.ndarray, classes: Sequence[str], path: str,
                    title: str) -> Tuple[int, int]:
    """The normalised matrices side by side and the per-class diagonal gain, each a square of 3 x 3
    cells: a grid of 3 rows and ``3 * (len(matrices) + 1)`` columns."""
    plt = _pyplot()
    rows, columns = 3, 3 * (len(matrices) + 1)
    fig = plt.figure(figsize=(columns * CELL, rows * CELL + TITLE), dpi=DPI)
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(1, len(matrices) + 1, gridspec_kw=dict(left=0.05, right=0.98, bottom=0.13, top=0.82,
                                                                 wspace=0.35))
    ticks = list(range(len(classes))) if len(classes) <= 20 else []
    names = [classes[i] for i in ticks]
    for ax, (name, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}\nmean diagonal {np.mean(np.diagonal(matrix)):.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_xticks(ticks, names, fontsize=6)
        ax.set_yticks(ticks, names, fontsize=6)
    fig.colorbar(image, ax=list(axes[:-1]), fraction=0.02, pad=0.01)
    ax = axes[-1]
    ax.barh(range(len(gain)), gain, color=["tab:green" if g >= 0 else "tab:red" for g in gain])
    ax.set_ylim(len(gain) - 0.5, -0.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ticks, names, fontsize=6)
    ax.set_xlabel("gain of the diagonal", fontsize=8)
    ax.set_title(f"{list(matrices)[0]} minus {list(matrices)[1]}" if len(matrices) == 2 else "diagonal gain",
                 fontsize=8)
    ax.tick_params(axis="x", labelsize=6)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return grid_size(rows, columns)


def plot_metric_curves(curves: Mapping[str, Tuple[List[int], List[float]]], ylabel: str, path: str,
                       title: str) -> Tuple[int, int]:
    """One line per run: `curves` label -> (epochs, values)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=CURVES_SIZE, dpi=DPI)
    colors = group_colors(len(curves))
    for index, (label, (epochs, values)) in enumerate(curves.items()):
        ax.plot(epochs, values, marker="o", ms=2.5, lw=1.3, color=colors[index % len(colors)], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return int(round(CURVES_SIZE[0] * DPI)), int(round(CURVES_SIZE[1] * DPI))


def class_gains(gain: np.ndarray, classes: Sequence[str], model: np.ndarray, other: np.ndarray,
                labels: Tuple[str, str]) -> str:
    """The per-class diagonals and their gain as a Markdown table, largest gain first."""
    from mdistiller.experiments.tables import markdown_table

    order = np.argsort(-gain, kind="stable")
    rows = [[classes[i], f"{np.diagonal(other)[i]:.3f}", f"{np.diagonal(model)[i]:.3f}", f"{gain[i]:+.3f}"]
            for i in order]
    return markdown_table(["class", labels[1], labels[0], "gain"], rows, "lrrr")


def masks_for_display(masks: Tensor, size: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """(B, h, w) masks as numpy arrays, nearest-upsampled to `size` when given."""
    if size is not None:
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return [m.detach().cpu().numpy() for m in masks]
