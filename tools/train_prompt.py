"""Stage 1 of FreeKD (and other prompt-based methods) alone: learn the frequency prompts in the teacher.

    python tools/train_prompt.py --cfg configs/cifar100/freekd/res32x4_res8x4.yaml [KEY VALUE ...] [--resume]
    python tools/train.py        --cfg configs/cifar100/freekd/res32x4_res8x4.yaml [the same KEY VALUE ...]

(tools/train.py alone runs both stages.)

The prompts are written to <METHOD>.PROMPT_PATH (by default a file under
<LOG.PREFIX>/<EXPERIMENT.PROJECT>/prompts/ named after the dataset, teacher and prompt shape), where
stage 2 (tools/train.py with the same config and overrides) finds them.
"""

import argparse
import shlex
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.prompt_learning import PromptStage
from mdistiller.errors import ConfigError


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Learn frequency prompts in the teacher (FreeKD stage 1).")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file of the stage-2 run")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted stage 1")
    args, opts = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cfg = build_cfg(args.cfg, opts)
    if PromptStage.name not in distiller_dict.get(cfg.DISTILLER.TYPE).stages:
        raise ConfigError(f"DISTILLER.TYPE {cfg.DISTILLER.TYPE} does not use frequency prompts (it declares no "
                          f"{PromptStage.name} stage); use the config of a prompt-based method such as FREEKD.")
    path = PromptStage().run(cfg, resume=args.resume)
    command = " ".join(shlex.quote(a) for a in ["python", "tools/train.py", "--cfg", args.cfg, *opts])
    print(f"Saved the prompts to {path}")
    print(f"Stage 2: {command}")


if __name__ == "__main__":
    run_tool(main)
