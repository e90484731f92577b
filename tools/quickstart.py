"""The quick-start job on scikit-learn's bundled digits: train a teacher on the whole training split,
distil students on a small stratified fraction of it (DATASET.TRAIN_FRACTION) with every chosen
method and three seeds, and write `output/quickstart/results.{json,md}` with the mean ± std per
method, the methods that beat the student alone by more than the spread, and two plots.

    python tools/quickstart.py                    # the default method set, 3 seeds, 10% of the split
    python tools/quickstart.py --all              # every registered distiller
    python tools/quickstart.py --methods KD,DKD   # a chosen few
    python tools/quickstart.py --fraction 1       # students on the whole split (every method ~99 %)
    python tools/quickstart.py --seeds 0 SOLVER.AMP False   # one seed; KEY VALUE pairs go to every run

On the whole split every method lands at 98-99.7 % and one test image is 0.28 points, so the
ranking is noise; with a tenth of the split the student alone falls several points below the
teacher and a teacher's soft targets have something to give (Hinton et al., 2015, section 3).

Only what this tool writes under --out is ever deleted: it lists its runs and files in
`quickstart_outputs.json` there and, on the next call, removes exactly those.
"""

import argparse
import json
import os
import shutil
import statistics
import time
from typing import Dict, List, Optional, Sequence

import _path  # noqa: F401

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.cli import run_tool
from mdistiller.engine.run import run_stages, train_run
from mdistiller.engine.stages import stages_of
from mdistiller.errors import ConfigError, OutputDirError
from mdistiller.experiments.plots import plot_bars, plot_curves
from mdistiller.experiments.report import group_runs
from mdistiller.experiments.runs import Group, Run, Summary, read_run
from mdistiller.experiments.tables import markdown_table

CONFIG_DIR = os.path.join(_path.REPO_ROOT, "configs", "digits")
# The default set keeps `make demo` within a few minutes on 2 CPU cores; AFPKD and FAMKD (about 4x
# and 5x KD's step time on digits) run with --all or --methods.
DEFAULT_METHODS = ("NONE", "KD", "DKD", "CRD", "REVIEWKD", "SFAKD", "FREEKD", "CANKD", "CATKD")
DEFAULT_SEEDS = "0,1,2"
DEFAULT_FRACTION = 0.1
# Students on a fraction of the split train for more epochs (the same number of steps as 3 epochs of
# the whole split at 10 %); the whole split keeps the configs' 10.
SMALL_DATA_EPOCHS = 30
MANIFEST = "quickstart_outputs.json"
RESULT_FILES = ("results.json", "results.md", "accuracy.png", "accuracy_bars.png")


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


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {text!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs one or more distinct integers, got {text!r}.")
    return seeds


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def remove_previous_outputs(out: str, planned: Sequence[str]) -> None:
    """Delete what the last call wrote under `out` (as its manifest lists it), then record `planned`.

    Anything else stays: a planned name that exists without being listed raises OutputDirError
    instead of being overwritten.
    """
    manifest = os.path.join(out, MANIFEST)
    previous: List[str] = []
    if os.path.isfile(manifest):
        with open(manifest) as f:
            previous = json.load(f)
    for name in previous:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise OutputDirError(f"{manifest} lists {name!r}, not a name in {out}; delete that file by hand.")
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    clashes = [name for name in planned if os.path.lexists(os.path.join(out, name))]
    if clashes:
        raise OutputDirError(f"{os.path.join(out, clashes[0])} exists and was not written by the quick start; "
                             "pass another --out or move it away.")
    os.makedirs(out, exist_ok=True)
    with open(manifest, "w") as f:
        json.dump(list(planned), f, indent=1)


def beats_alone(method: Summary, alone: Summary) -> bool:
    """The difference of the means exceeds the sum of the two standard deviations (needs 2+ seeds)."""
    if len(method.values) < 2 or len(alone.values) < 2:
        return False
    return method.mean - alone.mean > method.std + alone.std


def write_results(out: str, teacher: Group, students: Dict[str, Group], costs: Dict[str, Dict[str, float]],
                  setting: str) -> str:
    """results.json and results.md; returns the markdown."""
    alone = students.get("NONE")
    winners = [m for m, g in students.items() if m != "NONE" and alone is not None and beats_alone(g.best, alone.best)]
    rows = []
    for method, group in students.items():
        gain = "-" if alone is None or method == "NONE" else f"{group.best.mean - alone.best.mean:+.2f}"
        stage1 = costs[method]["stage1_seconds"]
        rows.append([method, group.student, group.best.text(), group.last.text(), gain,
                     "yes" if method in winners else "-", f"{int(costs[method]['extra_params']):,}",
                     f"{costs[method]['train_seconds']:.1f}", f"{stage1:.1f}" if stage1 else "-"])
    seeds = ", ".join(map(str, students[next(iter(students))].seeds))
    lines = [f"Teacher {teacher.student} on the whole training split: top-1 {teacher.best.text()}.",
             f"Students: {setting}; seeds {seeds}. Test top-1 (%), mean ± std over the seeds.", "",
             markdown_table(["method", "student", "top-1 (best)", "top-1 (last)", "vs alone", "beats alone",
                             "extra params", "train s", "stage 1 s"], rows, "llrrrlrrr").rstrip("\n"), ""]
    if alone is None:
        lines.append("NONE (the student alone) was not run, so no method is compared with it.")
    elif len(alone.best.values) < 2:
        lines.append("One seed: no spread to compare with; run two or more seeds (--seeds) for that verdict.")
    else:
        lines.append("Beat the student alone by more than the spread (the difference of the means above the sum "
                     "of the two standard deviations): " + (", ".join(winners) if winners else "none") + ".")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    summary = {
        "teacher": {"model": teacher.student, "top1": teacher.best.mean},
        "setting": setting,
        "seeds": students[next(iter(students))].seeds,
        "students": {m: {"model": g.student, "top1": g.best.mean, "top1_std": g.best.std if len(g.runs) > 1 else None,
                         "top1_runs": g.best.values, "last_top1": g.last.mean, **costs[m]}
                     for m, g in students.items()},
        "beats_student_alone": winners,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return text


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Train a teacher and distil students on the digits data.")
    parser.add_argument("--methods", default=None, help=f"comma-separated distillers (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--all", action="store_true", help="every registered distiller")
    parser.add_argument("--out", default="output/quickstart", help="output directory")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"student seeds, comma-separated (default {DEFAULT_SEEDS}); "
                        "the teacher trains once, with the first")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                        help=f"DATASET.TRAIN_FRACTION of the students (default {DEFAULT_FRACTION}; 1: the whole split)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override SOLVER.EPOCHS for every run (and cap the prompt methods' stage 1)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    args = parser.parse_args(argv)
    methods = selected_methods(args.methods, args.all)
    seeds = parse_seeds(args.seeds)
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError("--epochs must be at least 1.")
    student_epochs = args.epochs or (SMALL_DATA_EPOCHS if args.fraction < 1.0 else None)
    common = list(args.opts) + [f"LOG.PREFIX={os.path.dirname(args.out) or '.'}",
                                f"EXPERIMENT.PROJECT={os.path.basename(args.out)}"]
    teacher_opts = common + ["EXPERIMENT.NAME=teacher", f"EXPERIMENT.SEED={seeds[0]}"]
    teacher_opts += [f"SOLVER.EPOCHS={args.epochs}"] if args.epochs else []
    teacher_cfg = build_cfg(os.path.join(CONFIG_DIR, "teacher.yaml"), teacher_opts)
    student_opts = common + [f"DATASET.TRAIN_FRACTION={args.fraction}", f"DISTILLER.TEACHER={teacher_cfg.DISTILLER.STUDENT}"]
    student_opts += [f"SOLVER.EPOCHS={student_epochs}"] if student_epochs else []
    planned = ["teacher"] + [run_name(m, s) for m in methods for s in seeds] + list(RESULT_FILES)
    remove_previous_outputs(args.out, planned)

    started = time.perf_counter()
    print(f"== teacher {teacher_cfg.DISTILLER.STUDENT} (whole training split)")
    teacher = train_run(teacher_cfg, verbose=False)
    teacher_weights = os.path.join(teacher.run_dir, "student_best")
    runs: List[Run] = [read_run(teacher.run_dir)]
    costs: Dict[str, Dict[str, float]] = {}
    for method in methods:
        times, stage1_times = [], []
        for seed in seeds:
            opts = student_opts + [f"EXPERIMENT.NAME={run_name(method, seed)}", f"EXPERIMENT.SEED={seed}",
                                   f"DISTILLER.TYPE={method}", f"DISTILLER.TEACHER_WEIGHTS={teacher_weights}"]
            cfg = build_cfg(method_config(method), opts)
            if args.epochs is not None:  # the method's stages (FREEKD's prompts) no longer than its training
                caps = []
                for stage in stages_of(distiller_dict[method].stages):
                    section, leaf = stage.epochs_key(cfg).split(".")
                    caps.append(f"{section}.{leaf}={min(args.epochs, cfg[section][leaf])}")
                cfg = build_cfg(method_config(method), opts + caps)
            print(f"== {method} seed {seed}: {cfg.DISTILLER.TEACHER} -> {cfg.DISTILLER.STUDENT}")
            prepare_started = time.perf_counter()
            prepared = run_stages(cfg, verbose=False)  # the stages the method declares (FREEKD's prompts)
            stage1_times.append(time.perf_counter() - prepare_started if prepared else 0.0)
            trainer = train_run(cfg, verbose=False)
            run = read_run(trainer.run_dir)
            runs.append(run)
            times.append(sum(r["train_seconds"] for r in run.records))
        costs[method] = {"extra_params": trainer.distiller.get_extra_parameters(),
                         "train_seconds": statistics.fmean(times), "stage1_seconds": statistics.fmean(stage1_times)}

    groups = group_runs(runs)
    teacher_group = next(g for g in groups if g.runs[0].path == teacher.run_dir)
    by_method = {g.method: g for g in groups if g is not teacher_group}
    students = {m: by_method[m] for m in methods}
    images = len(trainer.train_loader.dataset)
    setting = (f"{cfg.DISTILLER.STUDENT} on DATASET.TRAIN_FRACTION {args.fraction} of the split ({images} images, "
               f"stratified, drawn per seed), {cfg.SOLVER.EPOCHS} epochs")
    table = write_results(args.out, teacher_group, students, costs, setting)
    pair = (teacher_cfg.DATASET.TYPE, teacher_cfg.DISTILLER.STUDENT, cfg.DISTILLER.STUDENT)
    shown = [teacher_group] + list(students.values())
    plot_curves(pair, shown, os.path.join(args.out, "accuracy.png"))
    plot_bars(pair, shown, os.path.join(args.out, "accuracy_bars.png"))
    print("\n" + table)
    print(f"Wrote {args.out}/results.json, results.md, accuracy.png and accuracy_bars.png "
          f"in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    run_tool(main)
