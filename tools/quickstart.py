"""The quick-start job on scikit-learn's bundled digits: train a teacher on the whole training split,
distil students on a small stratified fraction of it (DATASET.TRAIN_FRACTION) with every chosen
method and three seeds, and write `output/quickstart/results.{json,md}` with the mean ± std per
method, the methods that beat the student alone by more than the spread, and two plots; then the
robustness under the 15 corruptions of the teacher, the student alone and the best distilled student
(tools/robustness.py: robustness.{json,md,png}, its summary table in results.md) and one saliency, one
confusion and one curves picture of them (tools/visualize.py: saliency.png, confusion.png, curves.png).

    python tools/quickstart.py                    # the default method set, 3 seeds, 10% of the split
    python tools/quickstart.py --all              # every registered distiller
    python tools/quickstart.py --methods KD,DKD   # a chosen few
    python tools/quickstart.py --fraction 1       # students on the whole split (every method ~99 %)
    python tools/quickstart.py --seeds 0 SOLVER.AMP False   # one seed; KEY VALUE pairs go to every run
    python tools/quickstart.py --hetero           # across architectures: CNN -> ViT and ViT -> CNN
    python tools/quickstart.py --robustness-images 60   # robustness on the first 60 test images only

On the whole split every method lands at 98-99.7 % and one test image is 0.28 points, so the
ranking is noise; with a tenth of the split the student alone falls several points below the
teacher and a teacher's soft targets have something to give (Hinton et al., 2015, section 3).

`--hetero` runs the plan of configs/digits/hetero/demo.yaml instead: each direction's teacher (the
CNN of configs/digits/teacher.yaml, a tiny timm ViT) on the whole split, then a student of the other
kind alone and with each of the direction's methods, whose configs (fraction, epochs, solver) are
configs/digits/hetero/<direction>/<method>.yaml; output/quickstart_hetero/results.md holds a table
per direction and each direction has its two plots.

Only what this tool writes under --out is ever deleted: it lists its runs and files in
`quickstart_outputs.json` there and, on the next call, removes exactly those.
"""

import argparse
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

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
HETERO_PLAN = os.path.join(CONFIG_DIR, "hetero", "demo.yaml")
# The default set keeps `make demo` within a few minutes on 2 CPU cores; AFPKD and FAMKD (about 4x
# and 5x KD's step time on digits) run with --all or --methods.
DEFAULT_METHODS = ("NONE", "KD", "DKD", "CRD", "REVIEWKD", "SFAKD", "FREEKD", "CANKD", "CATKD")
DEFAULT_SEEDS = "0,1,2"
DEFAULT_FRACTION = 0.1
# Students on a fraction of the split train for more epochs (the same number of steps as 3 epochs of
# the whole split at 10 %); the whole split keeps the configs' 10.
SMALL_DATA_EPOCHS = 30
MANIFEST = "quickstart_outputs.json"
PLOTS = ("accuracy", "accuracy_bars")
# What the default demo adds: the robustness of teacher, student alone and best distilled student
# (tools/robustness.py) and one saliency, one confusion and one curves picture (tools/visualize.py).
EXTRAS = ("robustness.json", "robustness.md", "robustness.png", "saliency.png", "confusion.png", "confusion.md",
          "confusion.json", "curves.png")


@dataclass
class Direction:
    """A teacher and the students distilled from it: the default demo has one, --hetero two.

    `name` prefixes the direction's run names and plot files ('' in the default demo);
    `config_dir` holds `<method>.yaml` for the methods that have one and `student.yaml`.
    """

    name: str
    title: str
    teacher_config: str
    config_dir: str
    methods: List[str]

    def run_name(self, method: str, seed: int) -> str:
        return f"{self.name}_{run_name(method, seed)}" if self.name else run_name(method, seed)

    def plot_files(self) -> List[str]:
        return [f"{plot}_{self.name}.png" if self.name else f"{plot}.png" for plot in PLOTS]


def method_config(method: str, config_dir: str = CONFIG_DIR) -> str:
    """<config_dir>/<method>.yaml when the method has one, else <config_dir>/student.yaml."""
    path = os.path.join(config_dir, f"{method.lower()}.yaml")
    return path if os.path.isfile(path) else os.path.join(config_dir, "student.yaml")


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


def load_hetero_plan(path: str, methods: Optional[str]) -> Tuple[List[int], List[Direction]]:
    """The seeds and directions of the heterogeneous demo's plan file, each direction's methods
    narrowed to `methods` (comma-separated) when given."""
    with open(path) as f:
        plan = yaml.safe_load(f)
    here = os.path.dirname(path)
    directions = [Direction(d["name"], d["title"], os.path.normpath(os.path.join(here, d["teacher"])),
                            os.path.join(here, d["name"]), list(d["methods"])) for d in plan["directions"]]
    if methods:
        chosen = [m.strip() for m in methods.split(",")]
        planned = {m for d in directions for m in d.methods}
        unknown = [m for m in chosen if m not in planned]
        if unknown:
            raise ConfigError(f"--methods {unknown[0]} is in no direction of {path}; pick from {', '.join(sorted(planned))}.")
        for direction in directions:
            direction.methods = [m for m in direction.methods if m in chosen]
        directions = [d for d in directions if d.methods]
    return parse_seeds(",".join(map(str, plan["seeds"]))), directions


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


def model_text(name: str, kwargs: CN) -> str:
    """A model name with its constructor arguments: `timm:vit_tiny_patch16_224 (patch_size 4, ...)`."""
    return f"{name} ({', '.join(f'{k} {v}' for k, v in kwargs.items())})" if kwargs else name


def results_section(teacher: Group, teacher_model: str, students: Dict[str, Group],
                    costs: Dict[str, Dict[str, float]], setting: str) -> Tuple[str, dict]:
    """A direction's markdown (teacher line, table, verdict) and its results.json entry."""
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
    lines = [f"Teacher {teacher_model} on the whole training split: top-1 {teacher.best.text()}.",
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
    summary = {
        "teacher": {"model": teacher.student, "top1": teacher.best.mean},
        "setting": setting,
        "seeds": students[next(iter(students))].seeds,
        "students": {m: {"model": g.student, "top1": g.best.mean, "top1_std": g.best.std if len(g.runs) > 1 else None,
                         "top1_runs": g.best.values, "last_top1": g.last.mean, **costs[m]}
                     for m, g in students.items()},
        "beats_student_alone": winners,
    }
    return "\n".join(lines) + "\n", summary


def write_results(out: str, text: str, summary: dict) -> None:
    """results.md and results.json."""
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)


def train_teacher(config: str, common: Sequence[str], seed: int, epochs: Optional[int]) -> Tuple[CN, Run]:
    """The teacher of `config` on the whole training split, in the run directory named after the file."""
    name = os.path.splitext(os.path.basename(config))[0]
    opts = list(common) + [f"EXPERIMENT.NAME={name}", f"EXPERIMENT.SEED={seed}"]
    opts += [f"SOLVER.EPOCHS={epochs}"] if epochs else []
    cfg = build_cfg(config, opts)
    print(f"== teacher {model_text(cfg.DISTILLER.STUDENT, cfg.MODEL.STUDENT_KWARGS)} (whole training split)")
    return cfg, read_run(train_run(cfg, verbose=False).run_dir)


def distil_students(direction: Direction, student_opts: Sequence[str], seeds: Sequence[int],
                    epochs: Optional[int]) -> Tuple[List[Run], Dict[str, Dict[str, float]], CN, int]:
    """Every method of `direction` for every seed: the runs, each method's costs (extra parameters,
    mean training and stage-1 seconds), the last run's config and its number of training images."""
    runs: List[Run] = []
    costs: Dict[str, Dict[str, float]] = {}
    for method in direction.methods:
        times, stage1_times = [], []
        for seed in seeds:
            opts = list(student_opts) + [f"EXPERIMENT.NAME={direction.run_name(method, seed)}",
                                         f"EXPERIMENT.SEED={seed}", f"DISTILLER.TYPE={method}"]
            config = method_config(method, direction.config_dir)
            cfg = build_cfg(config, opts)
            if epochs is not None:  # the method's stages (FREEKD's prompts) no longer than its training
                caps = []
                for stage in stages_of(distiller_dict[method].stages):
                    section, leaf = stage.epochs_key(cfg).split(".")
                    caps.append(f"{section}.{leaf}={min(epochs, cfg[section][leaf])}")
                cfg = build_cfg(config, opts + caps)
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
    return runs, costs, cfg, len(trainer.train_loader.dataset)


def run_direction(out: str, direction: Direction, teacher_cfg: CN, teacher: Run, common: Sequence[str],
                  seeds: Sequence[int], fraction: Optional[float], epochs: Optional[int]) -> Tuple[str, dict]:
    """Distil the direction's students from its trained teacher, plot them; returns its results
    section (markdown, json)."""
    student_opts = list(common) + [f"DISTILLER.TEACHER={teacher_cfg.DISTILLER.STUDENT}",
                                   f"DISTILLER.TEACHER_WEIGHTS={os.path.join(teacher.path, 'student_best')}"]
    student_opts += [f"MODEL.TEACHER_KWARGS.{k}={v}" for k, v in teacher_cfg.MODEL.STUDENT_KWARGS.items()]
    student_opts += [f"DATASET.TRAIN_FRACTION={fraction}"] if fraction is not None else []
    student_opts += [f"SOLVER.EPOCHS={epochs}"] if epochs else []
    runs, costs, cfg, images = distil_students(direction, student_opts, seeds, epochs)
    groups = group_runs([teacher] + runs)
    teacher_group = next(g for g in groups if g.runs[0].path == teacher.path)
    by_method = {g.method: g for g in groups if g is not teacher_group}
    students = {m: by_method[m] for m in direction.methods}
    setting = (f"{model_text(cfg.DISTILLER.STUDENT, cfg.MODEL.STUDENT_KWARGS)} on DATASET.TRAIN_FRACTION "
               f"{cfg.DATASET.TRAIN_FRACTION} of the split ({images} images, stratified, drawn per seed), "
               f"{cfg.SOLVER.EPOCHS} epochs")
    teacher_model = model_text(teacher_cfg.DISTILLER.STUDENT, teacher_cfg.MODEL.STUDENT_KWARGS)
    pair = (teacher_cfg.DATASET.TYPE, teacher_cfg.DISTILLER.STUDENT, cfg.DISTILLER.STUDENT)
    shown = [teacher_group] + list(students.values())
    curves, bars = direction.plot_files()
    plot_curves(pair, shown, os.path.join(out, curves))
    plot_bars(pair, shown, os.path.join(out, bars))
    return results_section(teacher_group, teacher_model, students, costs, setting)


def best_run(group: Group) -> Run:
    """The run of the group with the highest best top-1 (the first seed on a tie)."""
    return max(group.runs, key=lambda r: r.best_acc)


def robustness_and_pictures(out: str, teacher: Run, direction: Direction, seeds: Sequence[int], summary: dict,
                            limit: int) -> str:
    """The robustness table of the teacher, the student alone and the best distilled student, and the
    saliency, confusion and curves pictures of them, written into `out`; returns the results.md section."""
    import contextlib
    import io

    import robustness
    import visualize

    groups = {g.method: g for g in group_runs(read_run(os.path.join(out, direction.run_name(m, s)))
                                              for m in direction.methods for s in seeds)}
    distilled = [m for m in groups if m != "NONE"]
    best = max(distilled, key=lambda m: summary["students"][m]["top1"]) if distilled else None
    teacher_ckpt = os.path.join(teacher.path, "student_best")
    chosen = [("teacher", teacher.key("DISTILLER.STUDENT"), teacher_ckpt)]
    for method in [m for m in ("NONE", best) if m in groups]:
        run = best_run(groups[method])
        chosen.append((method, run.key("DISTILLER.STUDENT"), os.path.join(run.path, "student_best")))
    ckpts = {role: ckpt for role, _, ckpt in chosen}
    args = ["-d", teacher.key("DATASET.TYPE")] + [a for _, model, ckpt in chosen for a in ("-m", model, "-c", ckpt)]
    args += ["--baseline", ckpts["NONE"]] if "NONE" in ckpts else []
    args += ["--limit", str(limit)] if limit else []
    print(f"== robustness of {', '.join(role for role, _, _ in chosen)} under 15 corruptions x 5 severities")
    with contextlib.redirect_stdout(io.StringIO()):
        robustness.main(args + ["--json", os.path.join(out, "robustness.json"),
                                "--md", os.path.join(out, "robustness.md"), "--plot", os.path.join(out, "robustness.png")])
        shown = ckpts.get(best, ckpts.get("NONE"))
        alone = ["--student", ckpts["NONE"]] if best and "NONE" in ckpts else []
        visualize.main(["saliency", "-c", shown, *alone, "--teacher", teacher_ckpt, "--out", out])
        if alone:
            visualize.main(["confusion", "-c", shown, *alone, "--out", out])
        visualize.main(["curves", "-c", teacher.path] + [a for role, _, ckpt in chosen[1:]
                                                         for a in ("-c", os.path.dirname(ckpt))] + ["--out", out])
    with open(os.path.join(out, "robustness.md")) as f:
        table = f.read().split("\n\n")[:2]
    pictures = ["saliency.png (FreeKD eq. 15-16 saliency)"] + (["confusion.png"] if alone else []) + ["curves.png"]
    return ("\n## Robustness under corruption\n\n" + "\n\n".join(table).rstrip("\n")
            + "\n\nPer corruption and severity: robustness.md, robustness.json, robustness.png. Pictures: "
            + ", ".join(pictures) + ".\n")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Train a teacher and distil students on the digits data.")
    parser.add_argument("--methods", default=None, help=f"comma-separated distillers (default {','.join(DEFAULT_METHODS)}; "
                        "with --hetero: a subset of the plan's)")
    parser.add_argument("--all", action="store_true", help="every registered distiller")
    parser.add_argument("--hetero", action="store_true",
                        help=f"across architectures, CNN -> ViT and ViT -> CNN: the plan of {os.path.relpath(HETERO_PLAN, _path.REPO_ROOT)}")
    parser.add_argument("--out", default=None, help="output directory (default output/quickstart, "
                        "output/quickstart_hetero with --hetero)")
    parser.add_argument("--seeds", default=None, help=f"student seeds, comma-separated (default {DEFAULT_SEEDS}, "
                        "with --hetero the plan's); the teachers train once, with the first")
    parser.add_argument("--fraction", type=float, default=None,
                        help=f"DATASET.TRAIN_FRACTION of the students (default {DEFAULT_FRACTION}, with --hetero "
                        "the configs'; 1: the whole split)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override SOLVER.EPOCHS for every run (and cap the prompt methods' stage 1)")
    parser.add_argument("--robustness-images", type=int, default=0,
                        help="score robustness on the first N test images (default all; not with --hetero)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError("--epochs must be at least 1.")
    if args.hetero:
        if args.all:
            raise ConfigError(f"--all is for the default demo; with --hetero pick methods of {HETERO_PLAN} by --methods.")
        seeds, directions = load_hetero_plan(HETERO_PLAN, args.methods)
        out = args.out or "output/quickstart_hetero"
        fraction, student_epochs = args.fraction, args.epochs
    else:
        directions = [Direction("", "", os.path.join(CONFIG_DIR, "teacher.yaml"), CONFIG_DIR,
                                selected_methods(args.methods, args.all))]
        seeds = parse_seeds(DEFAULT_SEEDS)
        out = args.out or "output/quickstart"
        fraction = DEFAULT_FRACTION if args.fraction is None else args.fraction
        student_epochs = args.epochs or (SMALL_DATA_EPOCHS if fraction < 1.0 else None)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else seeds
    common = list(args.opts) + [f"LOG.PREFIX={os.path.dirname(out) or '.'}", f"EXPERIMENT.PROJECT={os.path.basename(out)}"]
    teacher_configs = list(dict.fromkeys(d.teacher_config for d in directions))
    planned = [os.path.splitext(os.path.basename(c))[0] for c in teacher_configs]
    planned += [d.run_name(m, s) for d in directions for m in d.methods for s in seeds]
    planned += ["results.json", "results.md"] + [f for d in directions for f in d.plot_files()]
    planned += [] if args.hetero else list(EXTRAS)
    remove_previous_outputs(out, planned)

    started = time.perf_counter()
    teachers = {config: train_teacher(config, common, seeds[0], args.epochs) for config in teacher_configs}
    sections = {d.name: run_direction(out, d, *teachers[d.teacher_config], common, seeds, fraction, student_epochs)
                for d in directions}
    if args.hetero:
        text = "\n".join(f"## {d.title}\n\n{sections[d.name][0]}" for d in directions)
        write_results(out, text, {"seeds": seeds, "directions": {name: s[1] for name, s in sections.items()}})
    else:
        text, summary = sections[""]
        text += robustness_and_pictures(out, teachers[teacher_configs[0]][1], directions[0], seeds, summary,
                                        args.robustness_images)
        with open(os.path.join(out, "robustness.json")) as f:
            summary["robustness"] = json.load(f)["models"]
        write_results(out, text, summary)
    print("\n" + text)
    extras = [] if args.hetero else [f for f in EXTRAS if os.path.isfile(os.path.join(out, f))]
    print(f"Wrote {out}/results.json, results.md and {', '.join([f for d in directions for f in d.plot_files()] + extras)} "
          f"in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    run_tool(main)
