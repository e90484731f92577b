"""What a finished (or unfinished) run directory says: its config, its epochs, its accuracies; and a
group of runs (one method, pair and setting) with the mean and spread of their accuracies.

A run directory (``<LOG.PREFIX>/<EXPERIMENT.PROJECT>/<name>/``, see tools/train.py) holds
``cfg.yaml`` and ``metrics.jsonl``. The config is read as plain YAML, not merged into the current
defaults, so runs of methods this checkout lacks can still be reported.
"""

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import yaml

from mdistiller.engine.loggers import read_metrics
from mdistiller.experiments.published import published_top1

# What the trainer keeps for the whole run beside the per-epoch records (wandb's run summary).
SUMMARY_METRICS = ("best_acc",)


@dataclass
class Run:
    """One run directory: its saved config (nested dicts) and per-epoch records."""

    path: str
    cfg: Dict[str, Any]
    records: List[Dict[str, float]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return int(self.records[-1]["epoch"]) if self.records else 0

    @property
    def planned_epochs(self) -> int:
        return int(self.cfg.get("SOLVER", {}).get("EPOCHS", 0))

    @property
    def finished(self) -> bool:
        return bool(self.records) and self.epochs >= self.planned_epochs

    @property
    def best_acc(self) -> float:
        """Best test top-1 over the epochs (what the trainer calls best_acc)."""
        return max(r["test_acc"] for r in self.records)

    @property
    def last_acc(self) -> float:
        """Test top-1 of the last epoch."""
        return self.records[-1]["test_acc"]

    def metric(self, name: str) -> float:
        """A metric as wandb's run summary holds it: best_acc, else the last epoch's value."""
        if name == "best_acc":
            return self.best_acc
        if name not in self.records[-1]:
            raise KeyError(f"run {self.path} logs no metric '{name}' (it logs {', '.join(sorted(self.records[-1]))})")
        return float(self.records[-1][name])

    def key(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (`SOLVER.EPOCHS`), `default` when absent."""
        node: Any = self.cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def read_run(path: str) -> Optional[Run]:
    """The run in `path`, or None when it has no cfg.yaml or no epoch record yet."""
    cfg_path = os.path.join(path, "cfg.yaml")
    if not os.path.isfile(cfg_path):
        return None
    records = read_metrics(path)
    if not records:
        return None
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f) or {}
    return Run(path=path, cfg=cfg, records=records)


def find_runs(root: str) -> Iterator[Run]:
    """Every run directory under `root` (any depth), in sorted path order."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if "metrics.jsonl" in files:
            run = read_run(directory)
            if run is not None:
                yield run


@dataclass
class Summary:
    """Mean, sample std (nan for one run) and the values."""

    values: List[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def text(self) -> str:
        return f"{self.mean:.2f}" if len(self.values) < 2 else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass
class Group:
    """The runs of one method, pair and setting."""

    dataset: str
    method: str
    teacher: str
    student: str
    setting: str
    runs: List[Run] = field(default_factory=list)

    @property
    def pair(self) -> str:
        return f"{self.teacher} → {self.student}" if self.teacher else f"{self.student} (alone)"

    @property
    def label(self) -> str:
        return f"{self.method} {self.setting}".strip()

    @property
    def best(self) -> Summary:
        return Summary([r.best_acc for r in self.runs])

    @property
    def last(self) -> Summary:
        return Summary([r.last_acc for r in self.runs])

    @property
    def seeds(self) -> List[int]:
        return sorted(int(r.key("EXPERIMENT.SEED", 0)) for r in self.runs)

    @property
    def published(self) -> Optional[float]:
        return published_top1(self.dataset, self.method, self.teacher, self.student)
