"""Running a sweep file's trials locally (tools/sweep.py): no W&B server needed.

Each trial runs the command a wandb agent would run, as a subprocess, its output going to
``<sweep dir>/logs/trial_<i>.log``. The sweep directory is
``<LOG.PREFIX>/<EXPERIMENT.PROJECT>/sweeps/<sweep file name>/`` of the trials' config; it gets
``records.jsonl`` (one line per trial run: parameters, run directory, status, accuracies) and
``results.md`` / ``results.csv`` (every trial, best first by the sweep's metric).

A trial is finished when its run directory holds all the configured epochs; a rerun of the sweep
skips finished trials and continues interrupted ones with ``--resume`` (their ``latest``
checkpoint), so the same command picks a stopped sweep up where it was.
"""

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.experiment import experiment_name
from mdistiller.errors import ConfigError
from mdistiller.experiments.runs import Run, read_run
from mdistiller.experiments.sweeps import Assignment, assignments, expand_command, train_arguments
from mdistiller.experiments.tables import markdown_table, write_csv


@dataclass
class Trial:
    """One parameter assignment of a sweep, the command that trains it and where its run goes."""

    index: int
    params: Assignment
    command: List[str]
    run_dir: str
    epochs: int

    @property
    def name(self) -> str:
        return os.path.basename(self.run_dir)


def plan_trials(spec: Dict[str, Any], count: Optional[int] = None, seed: int = 0) -> List[Trial]:
    """The sweep's trials with their commands and run directories (each its own directory)."""
    trials = []
    owners: Dict[str, int] = {}
    for index, params in enumerate(assignments(spec, count, seed)):
        command = expand_command(spec, params)
        cfg_file, opts = train_arguments(command, spec["program"])
        cfg = build_cfg(cfg_file, opts)
        name, _ = experiment_name(cfg, opts)
        run_dir = os.path.join(cfg.LOG.PREFIX, name)
        if run_dir in owners:
            raise ConfigError(f"Trials {owners[run_dir]} and {index} of {spec.get('_path', 'the sweep')} would both "
                              f"write {run_dir}: sweep keys that appear in the run name (not LOG.* / EXPERIMENT.*).")
        owners[run_dir] = index
        trials.append(Trial(index, params, command, run_dir, cfg.SOLVER.EPOCHS))
    return trials


def sweep_dir(spec: Dict[str, Any], trials: Sequence[Trial]) -> str:
    """`<project dir>/sweeps/<sweep file name>` of the first trial."""
    stem = os.path.splitext(os.path.basename(spec.get("_path", "sweep")))[0]
    return os.path.join(os.path.dirname(trials[0].run_dir), "sweeps", stem)


def finished_run(trial: Trial) -> Optional[Run]:
    """The trial's run when it holds all its epochs, else None."""
    run = read_run(trial.run_dir)
    return run if run is not None and run.epochs >= trial.epochs else None


def child_env(workers: int) -> Dict[str, str]:
    """The trials' environment: W&B off unless WANDB_MODE is set; CPU threads shared among workers."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    if workers > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


class SweepRunner:
    """Runs the pending trials of a sweep, `workers` at a time, and records each as it ends."""

    def __init__(self, spec: Dict[str, Any], trials: Sequence[Trial], workers: int = 1,
                 out_dir: Optional[str] = None) -> None:
        if workers < 1:
            raise ConfigError("--workers must be at least 1.")
        self.spec = spec
        self.trials = list(trials)
        self.workers = workers
        self.out_dir = out_dir or sweep_dir(spec, trials)
        self.metric = spec["metric"]["name"]
        self.maximize = spec["metric"].get("goal", "maximize") == "maximize"
        self.lock = threading.Lock()
        self.failed: List[Trial] = []

    @property
    def records_path(self) -> str:
        return os.path.join(self.out_dir, "records.jsonl")

    def log_path(self, trial: Trial) -> str:
        return os.path.join(self.out_dir, "logs", f"trial_{trial.index}.log")

    def record(self, trial: Trial, status: str, seconds: float, returncode: int = 0) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"trial": trial.index, "params": trial.params, "run_dir": trial.run_dir,
                                 "status": status, "returncode": returncode, "seconds": round(seconds, 1)}
        run = finished_run(trial)
        if run is not None:
            entry.update(best_acc=run.best_acc, last_acc=run.last_acc, metric=self.metric_value(run))
        with self.lock, open(self.records_path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
        return entry

    def metric_value(self, run: Run) -> Optional[float]:
        try:
            return run.metric(self.metric)
        except KeyError:
            return None

    def run_trial(self, trial: Trial, position: str) -> None:
        resume = os.path.isfile(os.path.join(trial.run_dir, "latest"))
        command = trial.command + (["--resume"] if resume else [])
        started = time.perf_counter()
        with open(self.log_path(trial), "a") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(self.workers)).returncode
        seconds = time.perf_counter() - started
        done = returncode == 0 and finished_run(trial) is not None
        entry = self.record(trial, "finished" if done else "failed", seconds, returncode)
        if done:
            message = f"{self.metric} {entry['metric']:.2f}" if entry.get("metric") is not None else \
                f"no metric {self.metric}"
            print(f"[{position}] finished {trial.name} in {seconds:.0f} s: {message}", flush=True)
        else:
            with self.lock:
                self.failed.append(trial)
            print(f"[{position}] FAILED {trial.name} (exit {returncode}): see {self.log_path(trial)}", flush=True)

    def run(self) -> List[Trial]:
        """Run every unfinished trial; returns the failed ones."""
        os.makedirs(os.path.join(self.out_dir, "logs"), exist_ok=True)
        pending = []
        for trial in self.trials:
            if finished_run(trial) is not None:
                print(f"[skip] {trial.name}: finished earlier", flush=True)
            else:
                pending.append(trial)
        total = len(pending)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for future in [pool.submit(self.run_trial, t, f"{i + 1}/{total}") for i, t in enumerate(pending)]:
                future.result()
        return self.failed

    def results(self) -> List[List[Any]]:
        """One row per trial: index, varying parameters, metric, best and last top-1, status, run name."""
        varying = varying_keys([t.params for t in self.trials])
        finished, unfinished = [], []
        for trial in self.trials:
            run = finished_run(trial)
            params = [trial.params[k] for k in varying]
            if run is None:
                unfinished.append([trial.index, *params, "", "", "", "failed" if trial in self.failed else "not run",
                                   trial.name])
            else:
                value = self.metric_value(run)
                finished.append([trial.index, *params, "" if value is None else round(value, 4),
                                 round(run.best_acc, 2), round(run.last_acc, 2), "finished", trial.name])
        column = 1 + len(varying)
        sign = -1 if self.maximize else 1
        finished.sort(key=lambda row: (row[column] == "", sign * row[column] if row[column] != "" else 0))
        return finished + unfinished

    def header(self) -> List[str]:
        varying = varying_keys([t.params for t in self.trials])
        return ["trial", *varying, self.metric, "best top-1", "last top-1", "status", "run"]

    def write_results(self) -> str:
        """results.md (with the fixed parameters above the table) and results.csv; returns the markdown."""
        header, rows = self.header(), self.results()
        fixed = {k: v for k, v in self.trials[0].params.items() if k not in header}
        lines = [f"Sweep {self.spec.get('_path', '')}: {len(self.trials)} trials, metric {self.metric} "
                 f"({'maximize' if self.maximize else 'minimize'})"]
        if fixed:
            lines.append("Fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
        varying = len(header) - 6
        shown = [[f"{c:.4g}" if i == 1 + varying and c != "" else c for i, c in enumerate(row)] for row in rows]
        text = "\n".join(lines) + "\n\n" + markdown_table(header, shown, "r" + "l" * varying + "rrrll")
        with open(os.path.join(self.out_dir, "results.md"), "w") as f:
            f.write(text)
        write_csv(os.path.join(self.out_dir, "results.csv"), header, rows)
        return text


def varying_keys(params: Sequence[Assignment]) -> List[str]:
    """The keys whose values differ among the assignments, in their order (all keys when only one)."""
    if len(params) < 2:
        return list(params[0]) if params else []
    return [k for k in params[0] if len({json.dumps(p.get(k), default=str) for p in params}) > 1]
