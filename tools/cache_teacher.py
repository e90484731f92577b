"""Build the teacher cache of a training run ahead of time (TEACHER_CACHE.MODE views).

    python tools/cache_teacher.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml [KEY VALUE ...]
    torchrun --nproc_per_node N tools/cache_teacher.py --cfg ...      # the shards split over N processes

Takes the same config and overrides as tools/train.py (TEACHER_CACHE.MODE is views here whatever
the config says) and writes the cache that run reads: the teacher's outputs for every view of every
training image, under TEACHER_CACHE.DIR (default LOG.PREFIX/teacher_cache)/<digest>. Prints the
size before building, shows a progress bar, resumes an interrupted build, rebuilds corrupt shards;
a complete cache is only checked. tools/train.py with TEACHER_CACHE.MODE views builds it on first
use all the same. Replay caches (TEACHER_CACHE.MODE replay) are recorded by the first training run.
"""

import argparse
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.run import build_teacher_cache


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Build the teacher-output cache of a training run.")
    parser.add_argument("--cfg", required=True, help="YAML config of the training run")
    args, opts = parser.parse_known_args(argv)
    cache = build_teacher_cache(build_cfg(args.cfg, list(opts) + ["TEACHER_CACHE.MODE", "views"]))
    print(f"Teacher cache ready: {cache.directory} ({cache.describe_size()}).")


if __name__ == "__main__":
    run_tool(main)
