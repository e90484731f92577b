"""The quick-start job on scikit-learn's bundled digits: train a teacher, distil a student with
every registered method, and write `output/quickstart/results.{json,md}` plus an accuracy plot.

    python tools/quickstart.py                   # the default method set
    python tools/quickstart.py --all             # every registered distiller
    python tools/quickstart.py --methods KD,DKD  # a chosen few
"""

import argparse
import json
import os
import shutil
import time
from typing import Dict, List, Optional

import _path  # noqa: F401

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.cli import run_tool
from mdistiller.engine.loggers import read_metrics
from mdistiller.engine.run import run_stages, train_run
from mdistiller.engine.stages import stages_of
from mdistiller.errors import ConfigError

CONFIG_DIR = os.path.join(_path.REPO_ROOT, "configs", "digits")
# The default set keeps `make demo` within about 10 minutes on 2 CPU cores; AFPKD and FAMKD (about 4x
# and 5x KD's step time on digits) run with --all or --methods.
DEFAULT_METHODS = ("NONE", "KD", "DKD", "CRD", "REVIEWKD", "SFAKD", "FREEKD", "CANKD", "CATKD")


def method_config(method: str) -> str:
    """configs/digits/<method>.yaml when the method has one, else the plain student config."""
    path = os.path.join(CONFIG_DIR, f"{method.lower()}.yaml")
    return path if os.path.isfile(path) else os.path.join(CONFIG_DIR, "student.yaml")


def selected_methods(methods: Optional[str], run_all: bool) -> List[str]:
    if run_all:
        return ["NONE"] + sorted(m for m in distiller_dict if m != "NONE")
    chosen = [m.strip() for m in methods.split(",")] if methods else list(DEFAULT_METHODS)
    for method in chosen:
        distiller_dict.get(method)
    return chosen


def write_table(results: Dict, path: str) -> str:
    teacher = results["teacher"]
    lines = [
        f"Teacher {teacher['model']}: top-1 {teacher['top1']:.2f}",
        "",
        "| method | student | top-1 (best) | top-1 (last) | extra params | train s | stage 1 s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, row in results["students"].items():
        stage1 = f"{row['stage1_seconds']:.1f}" if row.get("stage1_seconds") else "-"
        lines.append(f"| {method} | {row['model']} | {row['top1']:.2f} | {row['last_top1']:.2f} | "
                     f"{row['extra_params']:,} | {row['train_seconds']:.1f} | {stage1} |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot_accuracy(run_dirs: Dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20").colors   # 20 distinct colours: --all draws ~20 curves
    for i, (label, run_dir) in enumerate(run_dirs.items()):
        records = read_metrics(run_dir)
        ax.plot([r["epoch"] for r in records], [r["test_acc"] for r in records], marker="os^D"[i // 20 % 4], ms=3,
                color=colors[i % 20], linestyle="-" if i % 2 == 0 else "--", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Digits: test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Train a teacher and distil students on the digits data.")
    parser.add_argument("--methods", default=None, help=f"comma-separated distillers (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--all", action="store_true", help="every registered distiller")
    parser.add_argument("--out", default="output/quickstart", help="output directory")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override SOLVER.EPOCHS for every run (and cap the prompt methods' stage 1)")
    args = parser.parse_args(argv)
    methods = selected_methods(args.methods, args.all)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    common = [f"LOG.PREFIX={os.path.dirname(args.out) or '.'}", f"EXPERIMENT.PROJECT={os.path.basename(args.out)}"]
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError("--epochs must be at least 1.")
        common.append(f"SOLVER.EPOCHS={args.epochs}")

    started = time.perf_counter()
    teacher_cfg = build_cfg(os.path.join(CONFIG_DIR, "teacher.yaml"), common + ["EXPERIMENT.NAME=teacher"])
    print(f"== teacher {teacher_cfg.DISTILLER.STUDENT}")
    teacher = train_run(teacher_cfg, verbose=False)
    teacher_weights = os.path.join(teacher.run_dir, "student_best")
    results = {"teacher": {"model": teacher_cfg.DISTILLER.STUDENT, "top1": teacher.best_acc}, "students": {}}
    run_dirs = {f"teacher ({teacher_cfg.DISTILLER.STUDENT})": teacher.run_dir}

    for method in methods:
        opts = common + [f"EXPERIMENT.NAME={method}", f"DISTILLER.TYPE={method}",
                         f"DISTILLER.TEACHER={teacher_cfg.DISTILLER.STUDENT}", f"DISTILLER.TEACHER_WEIGHTS={teacher_weights}"]
        cfg = build_cfg(method_config(method), opts)
        if args.epochs is not None:  # the method's stages (FREEKD's prompts) no longer than its training
            caps = []
            for stage in stages_of(distiller_dict[method].stages):
                section, leaf = stage.epochs_key(cfg).split(".")
                caps.append(f"{section}.{leaf}={min(args.epochs, cfg[section][leaf])}")
            cfg = build_cfg(method_config(method), opts + caps)
        print(f"== {method}: {cfg.DISTILLER.TEACHER} -> {cfg.DISTILLER.STUDENT}")
        prepare_started = time.perf_counter()
        prepared = run_stages(cfg, verbose=False)  # the stages the method declares (FREEKD's prompts)
        stage1_seconds = time.perf_counter() - prepare_started if prepared else 0.0
        trainer = train_run(cfg, verbose=False)
        records = read_metrics(trainer.run_dir)
        results["students"][method] = {
            "model": cfg.DISTILLER.STUDENT,
            "top1": trainer.best_acc,
            "last_top1": records[-1]["test_acc"],
            "extra_params": trainer.distiller.get_extra_parameters(),
            "train_seconds": sum(r["train_seconds"] for r in records),
            "stage1_seconds": stage1_seconds,
        }
        run_dirs[method] = trainer.run_dir

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = write_table(results, os.path.join(args.out, "results.md"))
    plot_accuracy(run_dirs, os.path.join(args.out, "accuracy.png"))
    print("\n" + table)
    print(f"Wrote {args.out}/results.json, results.md and accuracy.png in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    run_tool(main)
