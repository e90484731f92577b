"""Train a student (or, with DISTILLER.TYPE NONE, a model alone).

    python tools/train.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml [KEY VALUE | KEY=VALUE | --KEY=VALUE ...]
    python tools/train.py --cfg ... --resume [RUN_DIR | CHECKPOINT]
    python tools/train.py --resume RUN_DIR | CHECKPOINT [KEY VALUE ...]   # the config saved in the checkpoint

`--resume` continues in the run directory (the checkpoint's directory), so a run can be extended
with more epochs (SOLVER.EPOCHS) where it is. Without --cfg the checkpoint's own config is used,
with the command line's overrides on top. A run directory without a checkpoint yet (a job a
scheduler restarts with the same command after it was stopped before its first epoch ended)
trains from the beginning, with the config in its `cfg.yaml`, and says so in one line.

Prompt-based methods (FREEKD, AFPKD) first need `python tools/train_prompt.py` with the same arguments
(stage 1); without its prompt file this tool stops and prints that exact command.
"""

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple, Union

import _path  # noqa: F401
from yacs.config import CfgNode as CN

from mdistiller.distillers._prompts import PromptFileError, stage1_command
from mdistiller.engine.cfg import build_cfg, load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.engine.cli import run_tool
from mdistiller.engine.run import train_run
from mdistiller.errors import CheckpointError, ConfigError

CONFIG_KEY = re.compile(r"^(--)?[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+(=.*)?$")


def split_resume(argv: List[str]) -> Tuple[List[str], Union[bool, str]]:
    """Take `--resume [PATH]` / `--resume=PATH` out of argv; PATH is optional."""
    rest, resume = [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--resume="):
            resume = arg.split("=", 1)[1]
        elif arg == "--resume":
            resume = True
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is not None and not following.startswith("-") and not CONFIG_KEY.match(following):
                resume = following
                i += 1
        else:
            rest.append(arg)
        i += 1
    if isinstance(resume, str) and not os.path.exists(resume):
        raise CheckpointError(f"Nothing to resume at {resume}: give a run directory or a checkpoint file.")
    return rest, resume


def resume_target(resume: Union[bool, str]) -> Tuple[Optional[str], Union[bool, str]]:
    """(run directory to keep writing in, checkpoint to load) for a --resume argument."""
    if isinstance(resume, str):
        if os.path.isdir(resume):
            return resume, os.path.join(resume, "latest")
        return os.path.dirname(os.path.abspath(resume)), resume
    return None, resume


def saved_cfg(checkpoint: str, opts: Sequence[str]) -> CN:
    """The config a checkpoint was trained with, the command-line overrides merged on top.

    Without the checkpoint (a run stopped before its first one), the run's own `cfg.yaml` beside it.
    """
    run_cfg = os.path.join(os.path.dirname(checkpoint), "cfg.yaml")
    if os.path.isfile(checkpoint):
        text = load_checkpoint(checkpoint).get("cfg")
    elif os.path.isfile(run_cfg):
        with open(run_cfg) as f:
            text = f.read()
    else:
        raise CheckpointError(f"Neither {checkpoint} nor {run_cfg} exists yet: pass the run's config file "
                              "with --cfg to start it.")
    if not text:
        raise CheckpointError(f"{checkpoint} holds no config: pass the run's config file with --cfg.")
    cfg = load_cfg_text(text)
    cfg.defrost()
    merge_overrides(cfg, opts)
    cfg.freeze()
    return cfg


def main(argv: Optional[List[str]] = None) -> None:
    argv, resume = split_resume(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description="Knowledge-distillation training.")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file")
    args, opts = parser.parse_known_args(argv)
    run_dir, resume = resume_target(resume)
    if args.cfg or not resume:
        cfg = build_cfg(args.cfg, opts)
    elif isinstance(resume, str):
        cfg = saved_cfg(resume, opts)
    else:
        raise ConfigError("--resume without a path needs --cfg to find the run; or give the run directory: "
                          "--resume output/<project>/<name>.")
    try:
        train_run(cfg, opts, resume=resume, run_dir=run_dir)
    except PromptFileError as err:  # stage 2 of a prompt method without its prompts: say exactly how to make them
        raise ConfigError(err.with_command(stage1_command(args.cfg, opts))) from None


if __name__ == "__main__":
    run_tool(main)
