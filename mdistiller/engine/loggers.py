"""Where a run's numbers go: worklog.txt (as MDistiller), metrics.jsonl, tensorboardX and wandb."""

import json
import os
import warnings
from typing import Dict, List, Optional

from yacs.config import CfgNode as CN


class WorkLog:
    """MDistiller's `worklog.txt`: one block of `key: value` lines per epoch."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "worklog.txt")

    def log(self, epoch: int, lr: float, metrics: Dict[str, float]) -> None:
        lines = ["-" * 25, f"epoch: {epoch}", f"lr: {lr:.4f}"]
        lines += [f"{k}: {v:.2f}" for k, v in metrics.items()]
        lines.append("-" * 25)
        with open(self.path, "a") as f:
            f.write(os.linesep.join(lines) + os.linesep)

    def finish(self, best_acc: float) -> None:
        with open(self.path, "a") as f:
            f.write(f"best_acc\t{best_acc:.2f}{os.linesep}")


class MetricsFile:
    """`metrics.jsonl`: one JSON record per epoch, the machine-readable history of a run."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "metrics.jsonl")

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (a resumed run writes them again)."""
        kept = [r for r in read_metrics(os.path.dirname(self.path)) if r["epoch"] <= epoch]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def log(self, record: Dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str) -> List[Dict[str, float]]:
    """The per-epoch records of a run directory (empty when it has none yet)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class TensorBoardLog:
    """Scalars per epoch in `<run_dir>/train.events` (MDistiller's location)."""

    def __init__(self, run_dir: str) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(run_dir, "train.events"))

    def log(self, epoch: int, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _to_dict(node: CN) -> dict:
    return {k: _to_dict(v) if isinstance(v, CN) else v for k, v in node.items()}


class WandbLog:
    """wandb: the whole config at init, one log call per epoch with the epoch as step, best_acc in summary.

    Works under WANDB_MODE=offline and disabled; a missing key or network gives one warning and the
    run goes on without wandb.
    """

    def __init__(self, cfg: CN, run_dir: str, name: str, tags: List[str], resume_id: Optional[str] = None) -> None:
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.EXPERIMENT.PROJECT or "distill",  # "" = runs straight under LOG.PREFIX
                name=name,
                tags=tags,
                config=_to_dict(cfg),
                dir=run_dir,
                id=resume_id,
                resume="allow" if resume_id else None,
            )
        except Exception as err:  # wandb raises many types (auth, network, usage); none may stop training
            warnings.warn(f"wandb disabled for this run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                          "run `wandb login` or set WANDB_MODE=offline to keep logs.", stacklevel=2)
            self.run = None

    @property
    def run_id(self) -> Optional[str]:
        return None if self.run is None else self.run.id

    def log(self, epoch: int, metrics: Dict[str, float], best_acc: float) -> None:
        if self.run is None:
            return
        self.run.log(metrics, step=epoch)
        self.run.summary["best_acc"] = best_acc

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
