"""Train a student (or, with DISTILLER.TYPE NONE, a model alone).

    python tools/train.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml [KEY VALUE | KEY=VALUE | --KEY=VALUE ...]
    python tools/train.py --cfg ... --resume [RUN_DIR | CHECKPOINT]
    python tools/train.py --resume RUN_DIR | CHECKPOINT [KEY VALUE ...]   # the config saved in the checkpoint
    python tools/train.py --cfg my.yaml --plugin my_pkg.my_method          # methods / models of one's own
    python tools/train.py --cfg configs/imagenet/r34_r18/sfakd.yaml -d imagenet   # MDistiller's -d

`--resume` continues in the run directory (the checkpoint's directory), so a run can be extended
with more epochs (SOLVER.EPOCHS) where it is. Without --cfg the checkpoint's own config is used,
with the command line's overrides on top. A run directory without a checkpoint yet (a job a
scheduler restarts with the same command after it was stopped before its first epoch ended)
trains from the beginning, with the config in its `cfg.yaml`, and says so in one line.

A method that declares stages (FREEKD, AFPKD: frequency prompts learned in the teacher) has them run
first, each when its output is missing or unfinished, then trains; `--resume` continues whichever
stage was interrupted. `python tools/train_prompt.py` with the same arguments runs stage 1 alone.
"""

import argparse
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import resume_target, run_cfg, run_tool, split_resume
from mdistiller.distillers.frequency_prompts import PromptFileError, stage1_command
from mdistiller.engine.run import train_run
from mdistiller.errors import ConfigError

def main(argv: Optional[List[str]] = None) -> None:
    argv, resume = split_resume(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description="Knowledge-distillation training.")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file")
    parser.add_argument("-d", "--dataset", default="", metavar="TYPE",
                        help="the dataset, e.g. cifar100 or imagenet: the override DATASET.TYPE TYPE, so it wins "
                             "over the config file's DATASET.TYPE and over a DATASET.TYPE on the command line")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (its methods, models, datasets); repeatable; "
                             "kept in EXPERIMENT.PLUGINS")
    args, opts = parser.parse_known_args(argv)
    if args.dataset:
        opts += ["DATASET.TYPE", args.dataset]
    run_dir, resume = resume_target(resume)
    cfg = run_cfg(args.cfg, opts, resume, args.plugin)
    try:
        train_run(cfg, opts, resume=resume, run_dir=run_dir)
    except PromptFileError as err:  # stage 2 of a prompt method without its prompts: say exactly how to make them
        raise ConfigError(err.with_command(stage1_command(args.cfg, opts))) from None


if __name__ == "__main__":
    run_tool(main)
