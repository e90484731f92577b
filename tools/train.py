"""Train a student (or, with DISTILLER.TYPE NONE, a model alone).

    python tools/train.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml [KEY VALUE | KEY=VALUE | --KEY=VALUE ...]
    python tools/train.py --cfg ... --resume [RUN_DIR | CHECKPOINT]

Prompt-based methods (FREEKD, AFPKD) first need `python tools/train_prompt.py` with the same arguments
(stage 1); without its prompt file this tool stops and prints that exact command.
"""

import argparse
import os
import re
import sys
from typing import List, Optional, Tuple, Union

import _path  # noqa: F401

from mdistiller.distillers._prompts import PromptFileError, stage1_command
from mdistiller.engine.cfg import build_cfg
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


def main(argv: Optional[List[str]] = None) -> None:
    argv, resume = split_resume(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description="Knowledge-distillation training.")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file")
    args, opts = parser.parse_known_args(argv)
    cfg = build_cfg(args.cfg, opts)
    run_dir, resume = resume_target(resume)
    try:
        train_run(cfg, opts, resume=resume, run_dir=run_dir)
    except PromptFileError as err:  # stage 2 of a prompt method without its prompts: say exactly how to make them
        raise ConfigError(err.with_command(stage1_command(args.cfg, opts))) from None


if __name__ == "__main__":
    run_tool(main)
