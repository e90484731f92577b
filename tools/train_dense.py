"""Train a detector or segmenter student (or, with DISTILLER.TYPE NONE, a model alone).

    python tools/train_dense.py --cfg configs/shapes/cwd.yaml [KEY VALUE | KEY=VALUE | --KEY=VALUE ...]
    python tools/train_dense.py --cfg ... --resume [RUN_DIR | CHECKPOINT]

FREEKD runs its stage 1 (prompts in the teacher) first when its prompt file is missing or unfinished;
`python tools/train_dense_prompt.py` with the same arguments runs stage 1 alone. With a SAM student
(configs/shapes/sam_*.yaml, configs/sa1b/) one command runs MobileSAM's two stages: the encoder
distillation (and FREEKD's prompts before it), then the mask-decoder fine-tuning; --resume continues
whichever was stopped.

The classification engine runs it (mdistiller/engine: checkpoints, resume, autocast, loggers,
wandb, one-line errors); mdistiller_dense supplies the data, models, distiller and metrics.
"""

import argparse
import shlex
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import resume_target, run_cfg, run_tool, split_resume
from mdistiller.distillers.frequency_prompts import PromptFileError
from mdistiller.engine.run import train_run
from mdistiller.errors import ConfigError
from mdistiller_dense.build import build_dense_run, dense_methods
from mdistiller_dense.config import build_dense_cfg, check_dense_cfg, load_dense_cfg_text


def main(argv: Optional[List[str]] = None) -> None:
    argv, resume = split_resume(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description="Knowledge distillation for detection and segmentation.")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file")
    args, opts = parser.parse_known_args(argv)
    run_dir, resume = resume_target(resume)
    cfg = run_cfg(args.cfg, opts, resume, build=build_dense_cfg, load_text=load_dense_cfg_text,
                  check=check_dense_cfg)
    try:
        train_run(cfg, opts, resume=resume, run_dir=run_dir, build=build_dense_run, methods=dense_methods(cfg))
    except PromptFileError as err:  # FREEKD stage 2 without its prompts: say exactly how to make them
        command = " ".join(shlex.quote(a) for a in ["python", "tools/train_dense_prompt.py", "--cfg", args.cfg, *opts])
        raise ConfigError(err.with_command(command)) from None


if __name__ == "__main__":
    run_tool(main)
