"""One training run from a config: data, models, distiller, trainer (tools/train.py and the demo)."""

import os
from typing import Callable, Optional, Sequence, Tuple, Union

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_distiller, check_names
from mdistiller.engine.cfg import show_cfg
from mdistiller.engine.distributed import process_group, shard_loaders
from mdistiller.engine.experiment import experiment_name
from mdistiller.engine.trainer import Trainer, ensure_writable_dir, trainer_dict
from mdistiller.engine.utils import resolve_device, seed_everything


def build_classification_run(cfg: CN) -> Tuple[object, object, nn.Module]:
    """The loaders and the distiller of a classification run (names checked before the data is read)."""
    check_names(cfg)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    return train_loader, val_loader, build_distiller(cfg, num_data, num_classes)


def train_run(cfg: CN, opts: Sequence[str] = (), resume: Union[bool, str] = False,
              run_dir: Optional[str] = None, verbose: bool = True,
              build: Callable[[CN], Tuple[object, object, nn.Module]] = build_classification_run) -> Trainer:
    """Build everything `cfg` names, train it, and return the finished trainer.

    `build(cfg)` returns the training loader, the validation loader and the distiller (the
    classification builders by default; mdistiller_dense passes its own). Launched by torchrun, the
    process joins the process group and trains on its shard of the data
    (mdistiller/engine/distributed.py).
    """
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)) as distributed:
        name, _ = experiment_name(cfg, opts)
        run_dir = run_dir or os.path.join(cfg.LOG.PREFIX, name)
        ensure_writable_dir(run_dir)  # before the slow part: data and models
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
        if verbose:
            show_cfg(cfg)
        train_loader, val_loader, distiller = build(cfg)
        if distributed:
            train_loader, val_loader = shard_loaders(train_loader, val_loader, cfg.EXPERIMENT.SEED)
        if cfg.DISTILLER.TYPE != "NONE":
            print(f"Extra parameters of {cfg.DISTILLER.TYPE}: {distiller.get_extra_parameters()}")
        trainer = trainer_dict[cfg.SOLVER.TRAINER](name, distiller, train_loader, val_loader, cfg, run_dir=run_dir)
        print(f"Run directory: {trainer.run_dir}")
        trainer.train(resume=resume)
    return trainer
