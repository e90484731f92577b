"""The report's figures, per teacher -> student pair: accuracy curves and a bar chart.

Curves: test top-1 per epoch, the mean over a group's runs with a band of ± one standard
deviation (the teacher trained alone dashed). Bars: each group's mean best top-1 with its standard
deviation, every run as a dot, the published number as a red diamond and the teacher as a dashed
line. Matplotlib's Agg backend (no display needed).
"""

import os
import re
import statistics
from typing import Dict, List, Sequence, Tuple

from mdistiller.experiments.report import Group

Pair = Tuple[str, str, str]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pair_title(pair: Pair) -> str:
    dataset, teacher, student = pair
    return f"{dataset}: {teacher} → {student}" if teacher else f"{dataset}: {student}"


def pair_file_stem(pair: Pair) -> str:
    return re.sub(r"[^\w.-]", "_", "_".join(p for p in pair if p))


def is_teacher_alone(group: Group, pair: Pair) -> bool:
    return group.method == "NONE" and bool(pair[1]) and group.student == pair[1]


def mean_curve(group: Group) -> Tuple[List[int], List[float], List[float]]:
    """Epochs every run of the group has, the mean test top-1 there and its std (0 for one run)."""
    per_run = [{int(r["epoch"]): r["test_acc"] for r in run.records} for run in group.runs]
    epochs = sorted(set.intersection(*(set(c) for c in per_run)))
    means = [statistics.fmean(c[e] for c in per_run) for e in epochs]
    stds = [statistics.stdev([c[e] for c in per_run]) if len(per_run) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def bar_label(group: Group, pair: Pair) -> str:
    if group.method == "NONE":
        return f"{group.student} alone"
    return group.method + ("\n" + group.setting.replace(", ", "\n") if group.setting else "")


def plot_curves(pair: Pair, groups: Sequence[Group], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for group in groups:
        epochs, means, stds = mean_curve(group)
        teacher = is_teacher_alone(group, pair)
        label = f"{bar_label(group, pair).replace(chr(10), ', ')} (n={len(group.runs)})"
        line, = ax.plot(epochs, means, linestyle="--" if teacher else "-", marker="o", ms=2.5, lw=1.4, label=label)
        ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{pair_title(pair)}: test accuracy per epoch (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(pair: Pair, groups: Sequence[Group], path: str) -> None:
    plt = _pyplot()
    teachers = [g for g in groups if is_teacher_alone(g, pair)]
    shown = [g for g in groups if not is_teacher_alone(g, pair)]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(shown) + 2), 4.5))
    values: List[float] = []
    for x, group in enumerate(shown):
        best = group.best
        values += best.values
        ax.bar(x, best.mean, width=0.6, color=f"C{x % 10}", alpha=0.75,
               yerr=best.std if len(best.values) > 1 else None, capsize=5, label=None)
        offsets = [(i - (len(best.values) - 1) / 2) * 0.08 for i in range(len(best.values))]
        ax.scatter([x + o for o in offsets], best.values, color="black", s=12, zorder=3,
                   label="runs" if x == 0 else None)
        if group.published is not None:
            values.append(group.published)
            ax.scatter([x], [group.published], marker="D", color="red", s=36, zorder=4,
                       label="published" if "published" not in ax.get_legend_handles_labels()[1] else None)
    for teacher in teachers:
        values.append(teacher.best.mean)
        ax.axhline(teacher.best.mean, color="grey", linestyle="--", lw=1.2,
                   label=f"teacher {teacher.student} ({teacher.best.text()})")
    low, high = min(values), max(values)
    margin = max(0.5, 0.25 * (high - low))
    ax.set_ylim(max(0.0, low - 2 * margin), min(100.0, high + margin))
    ax.set_xticks(range(len(shown)), [bar_label(g, pair) for g in shown], fontsize=8)
    ax.set_ylabel("best test top-1 (%)")
    ax.set_title(f"{pair_title(pair)}: best top-1, mean ± std")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pairs(pairs: Dict[Pair, List[Group]], out_dir: str) -> List[str]:
    """A curves and a bars figure per pair in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for pair, members in pairs.items():
        stem = os.path.join(out_dir, pair_file_stem(pair))
        plot_curves(pair, members, stem + "_curves.png")
        plot_bars(pair, members, stem + "_bars.png")
        written += [stem + "_curves.png", stem + "_bars.png"]
    return written
