"""One process of the multi-process matrix (tests/test_ddp_matrix.py): trains each case of a JSON
list in turn, in one process group, and writes what the test compares.

    python tests/ddp_matrix_worker.py STORE_FILE RANK CASES_JSON OUT_DIR

Rank 0 or 1 of 2. The process joins a gloo group through a FileStore (as tests/ddp_worker.py) and,
per case: runs stage 1 first when the case names a stage-1 tool (tools/train_prompt.py or
tools/train_dense_prompt.py, called with the case's arguments), trains 2 epochs, resumes to a
third, and after each run writes ``OUT_DIR/<case>/rank<R>_epoch<E>.pt``: the distiller's
state_dict (parameters and buffers) and the optimizer's state. Then the group is left, and rank 0
alone resumes each case it trained to 4 epochs, as one process, and writes ``rank0_epoch4.pt``.

A case is ``{"name", "tool": "train" | "train_dense", "args": [...], "stage1": "" | tool name}``.
``OUT_DIR/rank<R>_2.json`` (and rank 0's ``rank0_1.json`` of the last part) record per case "trained" or "refused: <the one-line error>",
the seconds it took and how often the fast teacher (mdistiller/engine/fast_teacher.py) was built
in the first 2-epoch run.
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
from mdistiller.engine.fast_teacher import InferenceTeacher  # noqa: E402
from mdistiller.engine.run import build_classification_run, train_run  # noqa: E402
from mdistiller.errors import UserError  # noqa: E402
from mdistiller.distillers import distiller_dict  # noqa: E402
from mdistiller_dense.build import build_dense_run  # noqa: E402
from mdistiller_dense.distillers import dense_distiller_dict  # noqa: E402
from mdistiller_dense.config import build_dense_cfg  # noqa: E402

BUILDERS = {"train": (build_cfg, build_classification_run, distiller_dict),
            "train_dense": (build_dense_cfg, build_dense_run, dense_distiller_dict)}


def split_cfg(args):
    """(config file, overrides) of a tool's argument list `--cfg FILE KEY VALUE ...`."""
    return args[1], list(args[2:])


def train(case: dict, epochs: int, resume: bool):
    make_cfg, build, methods = BUILDERS[case["tool"]]
    cfg_file, opts = split_cfg(case["args"])
    opts = opts + ["SOLVER.EPOCHS", str(epochs)]
    cfg = make_cfg(cfg_file, opts)
    run_dir = os.path.join(cfg.LOG.PREFIX, case["name"])
    return train_run(cfg, opts, resume=resume, run_dir=run_dir, verbose=False, build=build, methods=methods)


def count_teacher_builds() -> list:
    """Counts, in its one element, the fast teacher's (re)builds in this process from now on."""
    builds, original = [0], InferenceTeacher.build

    def build(self, example):
        builds[0] += 1
        return original(self, example)

    InferenceTeacher.build = build
    return builds


def dump(trainer, path: str) -> None:
    state = {"model": trainer.distiller.state_dict(), "optimizer": trainer.optimizer.state_dict()["state"]}
    torch.save(state, path)


def two_processes(case: dict, folder: str, rank: int, builds: list) -> int:
    """Stage 1 if any, 2 epochs, resumed to 3; returns the fast teacher's builds in the first run."""
    if case.get("stage1"):
        importlib.import_module(case["stage1"]).main(list(case["args"]))
    builds[0] = 0
    dump(train(case, 2, resume=False), os.path.join(folder, f"rank{rank}_epoch2.pt"))
    first_run_builds = builds[0]
    dump(train(case, 3, resume=True), os.path.join(folder, f"rank{rank}_epoch3.pt"))
    return first_run_builds


def one_process(case: dict, folder: str, rank: int, builds: list) -> int:
    dump(train(case, 4, resume=True), os.path.join(folder, "rank0_epoch4.pt"))
    return 0


def run_cases(cases, phase, out: str, rank: int, report_file: str) -> dict:
    """Each case through `phase`; its outcome, seconds and fast-teacher builds written to `report_file`."""
    report = {}
    builds = count_teacher_builds()
    for case in cases:
        folder = os.path.join(out, case["name"])
        os.makedirs(folder, exist_ok=True)
        start = time.perf_counter()
        teacher_builds = 0
        try:
            teacher_builds = phase(case, folder, rank, builds)
            outcome = "trained"
        except UserError as err:
            outcome = f"refused: {err}"
        report[case["name"]] = {"outcome": outcome, "seconds": round(time.perf_counter() - start, 2),
                                "teacher_builds": teacher_builds}
    with open(os.path.join(out, report_file), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main() -> None:
    store_file, rank, cases_file, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    with open(cases_file) as f:
        cases = json.load(f)
    report = run_cases(cases, two_processes, out, rank, f"rank{rank}_2.json")
    dist.destroy_process_group()
    if rank == 0:
        os.environ.update(WORLD_SIZE="1")  # from here on, one process as a plain `python tools/train.py`
        trained = [case for case in cases if report[case["name"]]["outcome"] == "trained"]
        run_cases(trained, one_process, out, rank, "rank0_1.json")


if __name__ == "__main__":
    main()
