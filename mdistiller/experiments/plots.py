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

from mdistiller.experiments.runs import Group

Pair = Tuple[str, str, str]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def metric_label(records: Sequence[Dict], metric: str = "test_acc") -> str:
    """The axis label of `metric` in a run's records: a dense run's test_acc is its AP or mIoU."""
    if metric == "test_acc" and records:
        if "test_ap" in records[-1]:
            return "test AP (%)"
        if "test_miou" in records[-1]:
            return "test mIoU (%)"
        return "test top-1 (%)"
    return metric


def group_colors(count: int) -> List[tuple]:
    """Distinct colours for `count` groups (tab10, tab20 past ten)."""
    plt = _pyplot()
    return list(plt.get_cmap("tab10" if count <= 10 else "tab20").colors)


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
    """Left: every epoch; right: the second half of the longest student schedule, zoomed in."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    students = [g for g in groups if not is_teacher_alone(g, pair)] or list(groups)
    last_epoch = max(mean_curve(g)[0][-1] for g in students)
    start = max(1, last_epoch // 2 + 1)
    window: List[float] = []
    colors = group_colors(len(groups))
    for index, group in enumerate(groups):
        epochs, means, stds = mean_curve(group)
        low = [m - s for m, s in zip(means, stds)]
        high = [m + s for m, s in zip(means, stds)]
        style = dict(linestyle="--" if is_teacher_alone(group, pair) else "-", marker="o", ms=2.5, lw=1.4)
        label = f"{bar_label(group, pair).replace(chr(10), ', ')} (n={len(group.runs)})"
        line, = full.plot(epochs, means, label=label, color=colors[index % len(colors)], **style)
        full.fill_between(epochs, low, high, color=line.get_color(), alpha=0.18, lw=0)
        kept = [i for i, e in enumerate(epochs) if start <= e <= last_epoch]
        if kept:
            zoom.plot([epochs[i] for i in kept], [means[i] for i in kept], color=line.get_color(), **style)
            zoom.fill_between([epochs[i] for i in kept], [low[i] for i in kept], [high[i] for i in kept],
                              color=line.get_color(), alpha=0.18, lw=0)
            window += [low[i] for i in kept] + [high[i] for i in kept]
    if window:
        spread = max(window) - min(window)
        zoom.set_ylim(min(window) - 0.1 * spread - 0.05, max(window) + 0.1 * spread + 0.05)
    ylabel = metric_label(groups[0].runs[0].records)
    full.set_title(f"{ylabel.replace(' (%)', '')} per epoch (mean ± std over seeds)", fontsize=10)
    zoom.set_title(f"epochs {start}-{last_epoch}, zoomed", fontsize=10)
    for ax in (full, zoom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    full.legend(fontsize=8, loc="lower right")
    fig.suptitle(pair_title(pair))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(pair: Pair, groups: Sequence[Group], path: str) -> None:
    plt = _pyplot()
    teachers = [g for g in groups if is_teacher_alone(g, pair)]
    shown = [g for g in groups if not is_teacher_alone(g, pair)]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(shown) + 2), 4.5))
    values: List[float] = []
    colors = group_colors(len(groups))  # as in the curves: a group has one colour in both figures
    for x, group in enumerate(shown):
        best = group.best
        values += best.values
        ax.bar(x, best.mean, width=0.6, color=colors[list(groups).index(group) % len(colors)], alpha=0.75,
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
    bottom = max(0.0, low - 2 * margin)
    ax.set_ylim(bottom, high + margin)
    for x, group in enumerate(shown):
        ax.text(x, bottom + 0.04 * (high + margin - bottom), f"{group.best.text()}\nn={len(group.runs)}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(shown)), [bar_label(g, pair) for g in shown], fontsize=8)
    ax.set_ylabel("best " + metric_label(groups[0].runs[0].records))
    ax.set_title(f"{pair_title(pair)}: best {metric_label(groups[0].runs[0].records)[5:-4]}, mean ± std (axis cut at {bottom:.1f})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
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
