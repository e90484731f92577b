"""Stage 1 of FreeKD (or AFPKD) on a detector / segmenter: learn the frequency prompts in the frozen teacher.

    python tools/train_dense_prompt.py --cfg configs/shapes/freekd.yaml [KEY VALUE ...]
    python tools/train_dense.py        --cfg configs/shapes/freekd.yaml [the same KEY VALUE ...]

The method is DISTILLER.TYPE when it is a prompt method (FREEKD, AFPKD), else FREEKD. The prompts go to
<METHOD>.PROMPT_PATH (by default under <LOG.PREFIX>/<EXPERIMENT.PROJECT>/prompts/),
where stage 2 finds them. With a SAM student (configs/shapes/sam_freekd.yaml) the prompts are learned
on the SAM teacher's image embedding (mdistiller_dense/sam/stages.py).
"""

import argparse
import shlex
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.errors import ConfigError
from mdistiller_dense.config import build_dense_cfg
from mdistiller_dense.distillers import dense_distiller_dict
from mdistiller_dense.prompt_learning import learn_dense_prompts
from mdistiller_dense.sam.models import is_sam_model
from mdistiller_dense.sam.stages import learn_sam_prompts


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Learn FreeKD's frequency prompts in a dense teacher (stage 1).")
    parser.add_argument("--cfg", type=str, default="", help="YAML config file of the stage-2 run")
    args, opts = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cfg = build_dense_cfg(args.cfg, opts)
    if is_sam_model(cfg.DISTILLER.STUDENT):
        if cfg.DISTILLER.TYPE != "FREEKD":
            raise ConfigError(f"{cfg.DISTILLER.TYPE} on SAM learns no prompts; use DISTILLER.TYPE FREEKD.")
        path = learn_sam_prompts(cfg)
    else:
        method = dense_distiller_dict[cfg.DISTILLER.TYPE]
        path = learn_dense_prompts(cfg, cfg.DISTILLER.TYPE if "DENSE_PROMPTS" in method.stages else "FREEKD")
    print(f"Saved the prompts to {path}")
    print("Stage 2: " + " ".join(shlex.quote(a) for a in ["python", "tools/train_dense.py", "--cfg", args.cfg, *opts]))


if __name__ == "__main__":
    run_tool(main)
