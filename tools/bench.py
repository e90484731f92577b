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
"""

import argparse
import json
from typing import Dict, List, Optional

import _path  # noqa: F401

from mdistiller.distillers import distiller_dict
from mdistiller.benchmark import ABLATION, EAGER_FP32, loader_throughput, run_benchmark
from mdistiller.engine.cfg import build_cfg
from mdistiller.cli import run_tool
from mdistiller.errors import ConfigError


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(record: Dict) -> str:
    """The measurements as a Markdown table."""
    lines = ["| run | img/s | step ms | peak MB | GFLOPs/img | extra params | x floor | x student |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, entry: Dict, vs_floor: Optional[float] = None, vs_student: Optional[float] = None) -> str:
        return (f"| {name} | {_number(entry['img_per_s'], 0)} | {_number(entry['step_ms'], 1)} | "
                f"{_number(entry['peak_mem_mb'], 0)} | {_number(entry['gflops_per_img'], 3)} | "
                f"{entry['extra_params']:,} | {_number(vs_floor, 3)} | {_number(vs_student, 3)} |")

    lines.append(row("student alone (CE)", record["student_only"]))
    lines.append(row("floor (student + teacher inference)", record["floor"]))
    for method, entry in record["methods"].items():
        if "error" in entry:
            lines.append(f"| {method} | failed: {entry['error']} | | | | | | |")
            continue
        lines.append(row(method, entry, entry["overhead_vs_floor"], entry["overhead_vs_student"]))
        for name, variant in entry.get("variants", {}).items():
            lines.append(row(f"{method}: {name} (defaults {variant['speedup']:.2f}x faster)", variant))
    return "\n".join(lines)


def selected_methods(configured: str, run_all: bool, methods: Optional[str]) -> List[str]:
    """The distillers to time: every registered one, a list, or the configured one (always included)."""
    if run_all:
        chosen = sorted(m for m in distiller_dict if m != "NONE")
    elif methods:
        chosen = [m.strip() for m in methods.split(",")]
        for method in chosen:
            distiller_dict.get(method)
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
    args, opts = parser.parse_known_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError("--iters must be at least 1 and --warmup at least 0.")
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
    print(table(record))
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    run_tool(main)
