"""One training run from a config: the method's stages, then data, models, distiller, trainer
(tools/train.py and the demo)."""

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.distillers import distiller_dict
from mdistiller.engine.build import build_distiller, check_names
from mdistiller.engine.cfg import show_cfg
from mdistiller.engine.distributed import local_device, process_group, shard_loaders
from mdistiller.engine.experiment import experiment_name
from mdistiller.engine.fast_path import channels_last_enabled, place_loader, prepare_distiller
from mdistiller.engine.stages import stages_of
from mdistiller.engine.teacher_cache import ViewCache, view_cache_for_run
from mdistiller.engine.trainer import Trainer, ensure_writable_dir, trainer_dict
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device, seed_everything
from mdistiller.registry import Registry


def build_classification_run(cfg: CN) -> Tuple[object, object, nn.Module]:
    """The loaders and the distiller of a classification run (names checked before the data is read)."""
    check_names(cfg)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg, distiller_dict.get(cfg.DISTILLER.TYPE).batch_fields)
    return train_loader, val_loader, build_distiller(cfg, num_data, num_classes)


def run_stages(cfg: CN, methods: Registry = distiller_dict, resume: bool = False, verbose: bool = True) -> List[str]:
    """Run the stages the method DISTILLER.TYPE of `methods` declares whose output is missing or
    unfinished, in order (mdistiller/engine/stages.py); returns the names of those it ran."""
    ran = []
    for stage in stages_of(methods.get(cfg.DISTILLER.TYPE).stages):
        if stage.done(cfg):
            if verbose:
                print(f"== stage {stage.name}: done, {stage.output(cfg)}")
            continue
        stage.run(cfg, resume=resume, verbose=verbose)
        ran.append(stage.name)
    return ran


def train_run(cfg: CN, opts: Sequence[str] = (), resume: Union[bool, str] = False,
              run_dir: Optional[str] = None, verbose: bool = True,
              build: Callable[[CN], Tuple[object, object, nn.Module]] = build_classification_run,
              methods: Registry = distiller_dict) -> Trainer:
    """Run the method's stages (:func:`run_stages`), build everything `cfg` names, train it, and
    return the finished trainer.

    `build(cfg)` returns the training loader, the validation loader and the distiller (the
    classification builders by default; mdistiller_dense passes its own, and its `methods`).
    When a stage ran, training starts afresh: a checkpoint from before was trained on another output
    of that stage. Launched by torchrun, the process joins the process group and trains on its shard
    of the data (mdistiller/engine/distributed.py).
    """
    with process_group(cfg, resolve_device(cfg.SOLVER.DEVICE)) as distributed:
        if run_stages(cfg, methods, resume=bool(resume), verbose=verbose):
            resume = False
        name, tags = experiment_name(cfg, opts)
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
        trainer.wandb_tags = tags
        print(f"Run directory: {trainer.run_dir}")
        trainer.train(resume=resume)
    return trainer


def build_teacher_cache(cfg: CN) -> ViewCache:
    """Build (or complete, or check) the TEACHER_CACHE.MODE views cache of the run `cfg` describes,
    as tools/train.py would on first use: the same data, teacher, device, autocast, channels_last
    and fast teacher. Under torchrun the shards are split over the processes (tools/cache_teacher.py)."""
    device = resolve_device(cfg.SOLVER.DEVICE)
    with process_group(cfg, device):
        device = local_device(device)
        seed_everything(cfg.EXPERIMENT.SEED, cfg.EXPERIMENT.DETERMINISTIC)
        train_loader, _, distiller = build_classification_run(cfg)
        amp_dtype = autocast_dtype(device, cfg.SOLVER)
        channels_last = channels_last_enabled(cfg.SOLVER.CHANNELS_LAST, device, amp_dtype)
        distiller = prepare_distiller(distiller, cfg.SOLVER, device, channels_last)
        train_loader = place_loader(train_loader, device, channels_last)
        return view_cache_for_run(cfg, distiller, train_loader, device, lambda: autocast_context(device, amp_dtype),
                                  amp_dtype, channels_last)
