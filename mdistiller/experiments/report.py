"""The results of many runs, grouped: mean and spread over seeds, beside the published numbers.

Runs are grouped by dataset, method, teacher -> student pair and *setting*: the config keys that
differ among the runs of one method and pair (a sweep's hyper-parameters), with the seed and the
keys that do not change what is trained (device, workers, paths, logging) left out. Each group
reports the mean ± sample standard deviation (n - 1) of the runs' best and last test top-1.
"""

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from mdistiller.experiments.published import published_verified
from mdistiller.experiments.runs import Group, Run, find_runs
from mdistiller.experiments.tables import markdown_table, write_csv

# Config sections that decide what a run trains (plus the method's own section).
SETTING_SECTIONS = ("DATASET", "DISTILLER", "SOLVER")
# Keys of those sections that change where or how fast a run goes, not what it learns.
NEUTRAL_KEYS = frozenset({
    "DATASET.ROOT", "DATASET.DOWNLOAD", "DATASET.NUM_WORKERS", "DATASET.PIN_MEMORY",
    "DATASET.PERSISTENT_WORKERS", "DATASET.TEST.BATCH_SIZE", "DISTILLER.TEACHER_WEIGHTS",
    "SOLVER.DEVICE", "SOLVER.COMPILE", "SOLVER.FAST_TEACHER", "SOLVER.CHANNELS_LAST",
})


def flatten(node: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_method(run: Run) -> str:
    """DISTILLER.TYPE, followed by the stage for a run of a stage before training (FREEKD's
    prompts in the teacher: "FREEKD stage PROMPTS", whose accuracy is the prompted teacher's)."""
    method = str(run.key("DISTILLER.TYPE", "NONE"))
    stage = str(run.key("EXPERIMENT.STAGE", "TRAIN"))
    return method if stage == "TRAIN" else f"{method} stage {stage}"


def run_pair(run: Run) -> Tuple[str, str, str, str]:
    """(dataset, method, teacher, student); the teacher is '' for a model trained alone."""
    method = run_method(run)
    teacher = "" if method == "NONE" else str(run.key("DISTILLER.TEACHER", ""))
    return str(run.key("DATASET.TYPE", "")), method, teacher, str(run.key("DISTILLER.STUDENT", ""))


def training_settings(run: Run) -> Dict[str, Any]:
    """The run's config keys that decide what it learns (seed excluded)."""
    sections = list(SETTING_SECTIONS)
    method = str(run.key("DISTILLER.TYPE", "NONE"))
    if method != "NONE" and method in run.cfg:
        sections.append(method)
    flat = {}
    for section in sections:
        flat.update(flatten(run.cfg.get(section, {}), f"{section}."))
    if method == "NONE":
        flat.pop("DISTILLER.TEACHER", None)
    return {k: v for k, v in flat.items() if k not in NEUTRAL_KEYS}


def _value_text(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def group_runs(runs: Iterable[Run]) -> List[Group]:
    """Groups sorted by dataset, pair, method (NONE first) and setting."""
    by_pair: Dict[Tuple[str, str, str, str], List[Run]] = {}
    for run in runs:
        by_pair.setdefault(run_pair(run), []).append(run)
    groups: Dict[Tuple[Any, ...], Group] = {}
    for (dataset, method, teacher, student), pair_runs in by_pair.items():
        settings = [training_settings(r) for r in pair_runs]
        keys = sorted({k for s in settings for k in s})
        varying = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
        for run, setting in zip(pair_runs, settings):
            label = ", ".join(f"{k}={_value_text(setting.get(k))}" for k in varying)
            key = (dataset, method, teacher, student, label)
            groups.setdefault(key, Group(dataset, method, teacher, student, label)).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.dataset, g.teacher or g.student, g.student,
                                                  g.method != "NONE", g.method, g.setting))


def pair_groups(groups: Sequence[Group]) -> Dict[Tuple[str, str, str], List[Group]]:
    """The groups shown together per (dataset, teacher, student): the teacher and the student
    trained alone, then the pair's methods. Models trained alone outside any pair get their own
    entry, with teacher ''."""
    pairs: Dict[Tuple[str, str, str], List[Group]] = {}
    for g in groups:
        if g.teacher:
            pairs.setdefault((g.dataset, g.teacher, g.student), []).append(g)
    shown = set()
    for (dataset, teacher, student), members in pairs.items():
        alone = [g for g in groups if g.method == "NONE" and g.dataset == dataset and g.student in (student, teacher)]
        members[:0] = sorted(alone, key=lambda g: g.student != teacher)
        shown.update(id(g) for g in alone)
    for g in groups:
        if g.method == "NONE" and id(g) not in shown:
            pairs.setdefault((g.dataset, "", g.student), []).append(g)
    return pairs


def table_order(groups: Sequence[Group]) -> List[Group]:
    """Groups pair by pair (teacher alone, student alone, the methods), each group once."""
    ordered: List[Group] = []
    seen = set()
    for members in pair_groups(groups).values():
        for g in members:
            if id(g) not in seen:
                seen.add(id(g))
                ordered.append(g)
    return ordered + [g for g in groups if id(g) not in seen]


SUMMARY_HEADER = ["dataset", "method", "pair", "setting", "runs", "seeds", "best top-1", "last top-1", "published"]
RUNS_HEADER = ["dataset", "method", "teacher", "student", "setting", "seed", "epochs", "best_acc", "last_acc", "run"]


def published_text(g: Group) -> str:
    """The published top-1, with "?" when it could not be checked against its paper."""
    if g.published is None:
        return "-"
    return f"{g.published:.2f}" + ("" if published_verified(g.dataset, g.method, g.teacher, g.student) else "?")


def summary_rows(groups: Sequence[Group]) -> List[List[Any]]:
    return [[g.dataset, g.method, g.pair, g.setting or "-", len(g.runs), ",".join(map(str, g.seeds)),
             g.best.text(), g.last.text(), published_text(g)] for g in groups]


def summary_csv_rows(groups: Sequence[Group]) -> List[List[Any]]:
    rows = []
    for g in groups:
        best, last = g.best, g.last
        rows.append([g.dataset, g.method, g.teacher, g.student, g.setting, len(g.runs), " ".join(map(str, g.seeds)),
                     round(best.mean, 4), round(best.std, 4), round(last.mean, 4), round(last.std, 4),
                     "" if g.published is None else g.published])
    return rows


def write_report(root: str, out_dir: Optional[str] = None, include_unfinished: bool = False,
                 plots: bool = True) -> Tuple[str, List[Group]]:
    """Gather the runs under `root`, write results.md, summary.csv, runs.csv and the plots.

    Returns the markdown text and the groups. Unfinished runs are left out (and listed) unless
    `include_unfinished`.
    """
    out_dir = out_dir or os.path.join(root, "report")
    os.makedirs(out_dir, exist_ok=True)
    runs, skipped = [], []
    for run in find_runs(root):
        (runs if run.finished or include_unfinished else skipped).append(run)
    groups = table_order(group_runs(runs))

    lines = [f"Results of {len(runs)} runs under {root}: test top-1 (%), mean ± std over runs (seeds).", ""]
    lines.append(markdown_table(SUMMARY_HEADER, summary_rows(groups), "llllrlrrr").rstrip("\n"))
    if any(g.published is not None and not published_verified(g.dataset, g.method, g.teacher, g.student)
           for g in groups):
        lines += ["", "Published numbers marked ? could not be checked against their paper (docs/methods/ofa.md)."]
    if skipped:
        lines += ["", f"Left out {len(skipped)} unfinished run(s): "
                  + ", ".join(f"{os.path.relpath(r.path, root)} ({r.epochs}/{r.planned_epochs} epochs)" for r in skipped)]
    figures: List[str] = []
    if plots and groups:
        from mdistiller.experiments.plots import plot_pairs

        figures = plot_pairs(pair_groups(groups), os.path.join(out_dir, "plots"))
        lines += ["", "Plots: " + ", ".join(os.path.relpath(p, out_dir) for p in figures)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(out_dir, "summary.csv"),
              ["dataset", "method", "teacher", "student", "setting", "runs", "seeds", "best_mean", "best_std",
               "last_mean", "last_std", "published"], summary_csv_rows(groups))
    write_csv(os.path.join(out_dir, "runs.csv"), RUNS_HEADER,
              [[g.dataset, g.method, g.teacher, g.student, g.setting, r.key("EXPERIMENT.SEED", 0), r.epochs,
                r.best_acc, r.last_acc, os.path.relpath(r.path, root)] for g in groups for r in g.runs])
    return text, groups
