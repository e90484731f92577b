"""One process of the multi-process matrix (tests/test_ddp_matrix.py): trains each case of a JSON
list in turn, in one process group, and writes what the test compares.

    python tests/ddp_matrix_worker.py STORE_FILE RANK WORLD_SIZE CASES_JSON OUT_DIR

With WORLD_SIZE 2 the process joins a gloo group through a FileStore (as tests/ddp_worker.py) and,
per case: runs stage 1 first when the case names a stage-1 tool (tools/train_prompt.py or
tools/train_dense_prompt.py, called with the case's arguments), trains SOLVER.EPOCHS 1, resumes
to 2 epochs, and after each writes ``OUT_DIR/<case>/rank<R>_epoch<E>.pt``: the distiller's
state_dict (parameters and buffers) and the optimizer's state. With WORLD_SIZE 1 (no group) it
resumes each case's run to 3 epochs instead, on one process, and writes ``rank0_epoch3.pt``.

A case is ``{"name", "tool": "train" | "train_dense", "args": [...], "stage1": "" | tool name}``.
``OUT_DIR/rank<R>_<world>.json`` records per case "trained" or "refused: <the one-line error>" and
the seconds it took.
"""

import datetime
import importlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

from mdistiller.engine.cfg import build_cfg  # noqa: E402
from mdistiller.engine.run import build_classification_run, train_run  # noqa: E402
from mdistiller.errors import UserError  # noqa: E402
from mdistiller_dense.build import build_dense_run  # noqa: E402
from mdistiller_dense.config import build_dense_cfg  # noqa: E402

BUILDERS = {"train": (build_cfg, build_classification_run), "train_dense": (build_dense_cfg, build_dense_run)}


def split_cfg(args):
    """(config file, overrides) of a tool's argument list `--cfg FILE KEY VALUE ...`."""
    return args[1], list(args[2:])


def train(case: dict, epochs: int, resume: bool):
    make_cfg, build = BUILDERS[case["tool"]]
    cfg_file, opts = split_cfg(case["args"])
    opts = opts + ["SOLVER.EPOCHS", str(epochs)]
    cfg = make_cfg(cfg_file, opts)
    run_dir = os.path.join(cfg.LOG.PREFIX, case["name"])
    return train_run(cfg, opts, resume=resume, run_dir=run_dir, verbose=False, build=build)


def dump(trainer, path: str) -> None:
    state = {"model": trainer.distiller.state_dict(), "optimizer": trainer.optimizer.state_dict()["state"]}
    torch.save(state, path)


def run_case(case: dict, out: str, rank: int, world: int) -> None:
    folder = os.path.join(out, case["name"])
    os.makedirs(folder, exist_ok=True)
    if world == 1:
        dump(train(case, 3, resume=True), os.path.join(folder, "rank0_epoch3.pt"))
        return
    if case.get("stage1"):
        importlib.import_module(case["stage1"]).main(list(case["args"]))
    dump(train(case, 1, resume=False), os.path.join(folder, f"rank{rank}_epoch1.pt"))
    dump(train(case, 2, resume=True), os.path.join(folder, f"rank{rank}_epoch2.pt"))


def main() -> None:
    store_file, rank, world, cases_file, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
    with open(cases_file) as f:
        cases = json.load(f)
    report = {}
    for case in cases:
        start = time.perf_counter()
        try:
            run_case(case, out, rank, world)
            outcome = "trained"
        except UserError as err:
            outcome = f"refused: {err}"
        report[case["name"]] = {"outcome": outcome, "seconds": round(time.perf_counter() - start, 2)}
    with open(os.path.join(out, f"rank{rank}_{world}.json"), "w") as f:
        json.dump(report, f, indent=1)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
