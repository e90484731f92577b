"""Naming a run and finding its directory, as MDistiller's tools/train.py does."""

import os
import re
from typing import List, Sequence, Tuple

from yacs.config import CfgNode as CN

from mdistiller.engine.cfg import parse_overrides


def experiment_name(cfg: CN, opts: Sequence[str]) -> Tuple[str, List[str]]:
    """`PROJECT/<NAME or TAG><,KEY:VALUE for each override>` and the wandb tags.

    Characters that cannot stand in a file name are replaced by '_'.
    """
    name = cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG
    tags = cfg.EXPERIMENT.TAG.split(",")
    extra = [f"{key}:{value}" for key, value in parse_overrides(list(opts))]
    tags += extra
    name += "".join("," + tag for tag in extra) if extra else ""
    name = re.sub(r"[^\w,.:=+\-]", "_", name)
    return os.path.join(cfg.EXPERIMENT.PROJECT, name), tags
