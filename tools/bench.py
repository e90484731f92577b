"""Measure the cost of a distiller: student alone, the floor (student step + teacher inference),
the configured distiller (or every registered one), in one process on the configured device and
batch size.

    python tools/bench.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml [KEY VALUE ...]
        [--iters N] [--warmup N] [--all | --methods A,B] [--baseline] [--data] [--json OUT]

--baseline  also time the configured distiller in float32 eager mode without the fast path
            (SOLVER.AMP/CHANNELS_LAST/FAST_TEACHER/COMPILE off) and report the speed-up
--ablation  the same, switching the fast path on one piece at a time (channels_last, autocast)
--data      also time the CIFAR-100 training loader: DATASET.FAST_AUG against torchvision's PIL
            pipeline with DATASET.NUM_WORKERS workers
TEACHER_CACHE.MODE views (a config override): also time each distiller reading its teacher outputs
            from a views cache (a row "<method> (cached)": the trainer's own lookup, the teacher freed),
            and extrapolate the whole training set's cache size and build time from the teacher's
            measured throughput (`cache_build` in the JSON); a method reading feature maps says why not

The JSON holds `device`, `batch_size`, `student_only`, `floor`, `distiller` (each with `img_per_s`,
`step_ms`, `peak_mem_mb`, `gflops_per_img`, `extra_params`), `overhead_vs_floor`,
`overhead_vs_student`, `methods` (every method timed, each with its overheads; the configured one
with `variants`, each with `speedup`, under --baseline / --ablation), the settings and the load
average. Timings are medians over turns (mdistiller/benchmark.py).

A dense config (a detector or segmenter: DATASET.TYPE coco, segmentation or shapes) is measured by
mdistiller_dense/benchmark.py on one batch of its training set: student alone, floor (student step +
teacher backbone), the methods; the JSON adds `models` (student and teacher parameters and forward
GFLOPs per image) and per method `method_gflops_per_img` (its own modules' and loss's work).
--baseline, --ablation and --data are classification's. --table OUT writes the Markdown table(s).
"""

import argparse
import json
import os
from typing import Dict, List, Optional

import yaml

import _path  # noqa: F401

from mdistiller.distillers import distiller_dict
from mdistiller.benchmark import ABLATION, EAGER_FP32, loader_throughput, run_benchmark
from mdistiller.engine.cfg import build_cfg
from mdistiller.cli import run_tool
from mdistiller.errors import ConfigError
from mdistiller_dense.data import DATASET_TYPES
from mdistiller_dense.models import DETECTORS, SEGMENTERS


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row(name: str, entry: Dict, vs_floor: Optional[float] = None, vs_student: Optional[float] = None,
         dense: bool = False) -> str:
    """A subject's row; `dense` tables have one more cell, the method's own GFLOPs/img, and img/s to 0.1."""
    own = f" {_number(entry.get('method_gflops_per_img'), 3)} |" if dense else ""
    return (f"| {name} | {_number(entry['img_per_s'], 1 if dense else 0)} | {_number(entry['step_ms'], 1)} | "
            f"{_number(entry['peak_mem_mb'], 0)} | {_number(entry['gflops_per_img'], 3)} |{own} "
            f"{entry['extra_params']:,} | {_number(vs_floor, 3)} | {_number(vs_student, 3)} |")


def table(record: Dict) -> str:
    """The measurements as a Markdown table."""
    lines = ["| run | img/s | step ms | peak MB | GFLOPs/img | extra params | x floor | x student |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines.append(_row("student alone (CE)", record["student_only"]))
    lines.append(_row("floor (student + teacher inference)", record["floor"]))
    for method, entry in record["methods"].items():
        if "error" in entry:
            lines.append(f"| {method} | failed: {entry['error']} | | | | | | |")
            continue
        lines.append(_row(method, entry, entry["overhead_vs_floor"], entry["overhead_vs_student"]))
        for name, variant in entry.get("variants", {}).items():
            lines.append(_row(f"{method}: {name} (defaults {variant['speedup']:.2f}x faster)", variant))
    return "\n".join(lines)


def dense_table(record: Dict) -> str:
    """A dense record as two Markdown tables: the models (parameters, forward FLOPs), then the steps."""
    lines = ["| model | name | params | forward GFLOPs/img |", "|---|---|---:|---:|"]
    for role in ("student", "teacher"):
        model = record["models"][role]
        lines.append(f"| {role} | {record[role]} | {model['params']:,} | {_number(model['forward_gflops_per_img'], 3)} |")
    lines += ["", "| run | img/s | step ms | peak MB | GFLOPs/img | method GFLOPs/img | extra params | x floor | x student |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
              _row("student alone (task loss)", record["student_only"], dense=True),
              _row("floor (student + teacher backbone)", record["floor"], dense=True)]
    for method, entry in record["methods"].items():
        if "error" in entry:
            lines.append(f"| {method} | failed: {entry['error']} | | | | | | | |")
            continue
        lines.append(_row(method, entry, entry["overhead_vs_floor"], entry["overhead_vs_student"], dense=True))
    return "\n".join(lines)


def is_dense_config(path: str) -> bool:
    """Whether the YAML file (or a _BASE_ it names) sets a dense DATASET.TYPE or a dense student."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        return False
    if data.get("DATASET", {}).get("TYPE") in DATASET_TYPES:
        return True
    student = data.get("DISTILLER", {}).get("STUDENT")
    if isinstance(student, str) and student.split("_", 1)[0] in DETECTORS + SEGMENTERS:
        return True
    base = data.get("_BASE_")
    return bool(base) and is_dense_config(os.path.join(os.path.dirname(path), base))


def selected_methods(configured: str, run_all: bool, methods: Optional[str], registry=distiller_dict) -> List[str]:
    """The distillers of `registry` to time: every registered one, a list, or the configured one (always included)."""
    if run_all:
        chosen = sorted(m for m in registry if m != "NONE")
    elif methods:
        chosen = [m.strip() for m in methods.split(",")]
        for method in chosen:
            registry.get(method)
    elif configured == "NONE":
        raise ConfigError("DISTILLER.TYPE is NONE: give a distiller (e.g. DISTILLER.TYPE KD), --methods or --all.")
    else:
        chosen = []
    if configured != "NONE" and configured not in chosen:
        chosen.insert(0, configured)
    return chosen


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Time the student, the teacher floor and distillers.")
    parser.add_argument("--cfg", required=True, help="YAML config (pair, batch size, device, fast-path switches)")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per subject")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per subject first")
    parser.add_argument("--all", action="store_true", help="every registered distiller")
    parser.add_argument("--methods", default=None, help="comma-separated distillers instead of the configured one")
    parser.add_argument("--baseline", action="store_true", help="also time fp32 eager without the fast path")
    parser.add_argument("--ablation", action="store_true", help="also time the fast path one piece at a time")
    parser.add_argument("--data", action="store_true", help="also time the CIFAR-100 training loader")
    parser.add_argument("--json", default=None, help="write the measurements to this JSON file")
    parser.add_argument("--table", default=None, help="write the Markdown table(s) to this file")
    args, opts = parser.parse_known_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError("--iters must be at least 1 and --warmup at least 0.")
    if os.path.isfile(args.cfg) and is_dense_config(args.cfg):
        return dense_main(args, opts)
    cfg = build_cfg(args.cfg, opts)
    methods = selected_methods(cfg.DISTILLER.TYPE, args.all, args.methods)
    variants = ABLATION if args.ablation else {"fp32 eager, no fast path": EAGER_FP32} if args.baseline else None
    record = run_benchmark(cfg, methods, iters=args.iters, warmup=args.warmup, variants=variants)
    if args.data:
        record["data"] = loader_throughput(cfg)
    settings = record["settings"]
    print(f"{record['teacher']} -> {record['student']}, batch {record['batch_size']} on {record['device']} "
          f"({settings['threads']} threads), autocast {settings['amp']}, channels_last {settings['channels_last']}, "
          f"fast teacher {settings['fast_teacher']}, compile {settings['compile']}; load average "
          f"{record['load_average_before'][0]:.2f} before, {record['load_average_after'][0]:.2f} after")
    write_outputs(record, table(record), args)
    if "cache_build" in record:
        build = record["cache_build"]
        print(f"Teacher cache of {cfg.DATASET.TYPE} (extrapolated from the teacher's {build['teacher_views_per_s']:,.0f} "
              f"views/s measured here): {build['images']:,} images x {build['views']} views = {build['size']}, built "
              f"in about {build['build_s'] / 60:.1f} min")
    if "data" in record:
        data = record["data"]
        print(f"CIFAR-100 training loader ({data['source']}): FAST_AUG {data['fast_aug']['img_per_s']:,.0f} img/s, "
              f"torchvision with {data['torchvision']['workers']} workers {data['torchvision']['img_per_s']:,.0f} img/s "
              f"({data['speedup']:.1f}x)")


def write_outputs(record: Dict, text: str, args: argparse.Namespace) -> None:
    """Print the table; write it (--table) and the record (--json)."""
    print(text)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text + "\n")
        print(f"Wrote {args.table}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"Wrote {args.json}")


def dense_main(args: argparse.Namespace, opts: List[str]) -> None:
    """The dense form: mdistiller_dense/benchmark.py on a detector or segmenter pair."""
    from mdistiller_dense.benchmark import run_dense_benchmark
    from mdistiller_dense.config import build_dense_cfg
    from mdistiller_dense.distillers import dense_distiller_dict

    if args.baseline or args.ablation or args.data:
        raise ConfigError("--baseline, --ablation and --data are for classification configs; drop them for a dense one.")
    cfg = build_dense_cfg(args.cfg, opts)
    methods = selected_methods(cfg.DISTILLER.TYPE, args.all, args.methods, dense_distiller_dict)
    record = run_dense_benchmark(cfg, methods, iters=args.iters, warmup=args.warmup)
    settings = record["settings"]
    print(f"{record['teacher']} -> {record['student']} ({record['task']}), batch {record['batch_size']} of "
          f"{record['input_size'][0]}x{record['input_size'][1]} on {record['device']} ({settings['threads']} threads), "
          f"autocast {settings['amp']}, channels_last {settings['channels_last']}; load average "
          f"{record['load_average_before'][0]:.2f} before, {record['load_average_after'][0]:.2f} after")
    write_outputs(record, dense_table(record), args)


if __name__ == "__main__":
    run_tool(main)
