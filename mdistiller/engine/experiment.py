"""Naming a run and finding its directory, as MDistiller's tools/train.py does."""

import hashlib
import os
import re
from typing import List, Sequence, Tuple

from yacs.config import CfgNode as CN

from mdistiller.engine.cfg import parse_overrides

# Overrides that say where and how a run is logged, not what it trains: left out of the name.
NAME_NEUTRAL_SECTIONS = ("LOG.", "EXPERIMENT.")
# ... except these, which change the result: runs that differ only in them need their own directories.
NAME_RELEVANT_KEYS = ("EXPERIMENT.SEED", "EXPERIMENT.DETERMINISTIC")


MAX_NAME_LENGTH = 200  # file systems allow 255 bytes per name


def experiment_name(cfg: CN, opts: Sequence[str]) -> Tuple[str, List[str]]:
    """`PROJECT/<name>` and the wandb tags.

    With `EXPERIMENT.NAME` set, the name is exactly that. Otherwise it is MDistiller's: the TAG
    followed by `,KEY:VALUE` for each command-line override (LOG.* and EXPERIMENT.* overrides
    are left out, except EXPERIMENT.SEED and EXPERIMENT.DETERMINISTIC: the seeds of a sweep get
    one directory each). Tags are the TAG's comma-separated parts plus every such `KEY:VALUE`.
    Characters that cannot stand in a file name are replaced by '_'; a name longer than
    MAX_NAME_LENGTH keeps its start and ends with a digest of the whole, so it stays one file name.
    """
    extra = [f"{key}:{value}" for key, value in parse_overrides(list(opts))
             if key in NAME_RELEVANT_KEYS or not key.startswith(NAME_NEUTRAL_SECTIONS)]
    tags = cfg.EXPERIMENT.TAG.split(",") + extra
    name = cfg.EXPERIMENT.NAME or ",".join([cfg.EXPERIMENT.TAG] + extra)
    name = re.sub(r"[^\w,.:=+\-]", "_", name)
    if len(name) > MAX_NAME_LENGTH:  # many overrides (model constructor arguments): keep a file name
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME_LENGTH - 11]},{digest}"
    return os.path.join(cfg.EXPERIMENT.PROJECT, name), tags
