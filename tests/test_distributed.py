"""tools/train.py on 2 processes (DDP, gloo on the CPU, digits): rank 0 alone writes one run, the
validation metrics are reduced exactly over the two shards, DISTRIBUTED.SCALE_LR scales the LR,
and --resume continues the run. The processes meet through a FileStore and talk over the loopback.

With MDISTILLER_E2E=full the same run also goes through torchrun itself (master on 127.0.0.1).
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from helpers import WORKER, finish, process_env
from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_model
from mdistiller.engine.cfg import build_cfg, dump_cfg
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.loggers import read_metrics

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")
RUN_FILES = ["best", "cfg.yaml", "latest", "metrics.jsonl", "student_best", "student_latest", "train.events",
             "worklog.txt"]


def run_two_processes(tmp_path, *args):
    """stdout of rank 0 and rank 1 of `tools/train.py args` as one 2-process job."""
    store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"
    procs = [subprocess.Popen([sys.executable, WORKER, str(store), str(rank), "2", *args], cwd=str(tmp_path),
                              env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    return finish(procs)


def common_args(tmp_path, name: str):
    return ["--cfg", DIGITS, f"LOG.PREFIX={tmp_path}", f"EXPERIMENT.NAME={name}", "DATASET.IMAGE_SIZE=8",
            "SOLVER.AMP=False", "SOLVER.BATCH_SIZE=32", "DISTRIBUTED.SCALE_LR=True"]


def student_accuracy(checkpoint: str) -> float:
    """Top-1 of a saved student on the whole digits validation set, in this one process."""
    cfg = build_cfg(DIGITS, ["DATASET.IMAGE_SIZE=8", "SOLVER.AMP=False"])
    _, val_loader, _, num_classes = get_dataset(cfg)
    model = build_model("resnet8", "digits", num_classes)
    load_weights(model, student_state_dict(load_checkpoint(checkpoint)), checkpoint)
    return evaluate(lambda image: model.eval()(image)[0], val_loader, torch.device("cpu"))[0]


def check_one_run(run, epochs):
    assert sorted(os.listdir(run)) == RUN_FILES  # one set of files, no temporaries left by a second writer
    records = read_metrics(str(run))
    assert [r["epoch"] for r in records] == epochs
    assert (run / "worklog.txt").read_text().count("epoch: 1\n") == 1
    return records


def test_two_processes_write_one_run_reduce_metrics_and_resume(tmp_path):
    args = common_args(tmp_path, "ddp")
    rank0, rank1 = run_two_processes(tmp_path, *args, "SOLVER.EPOCHS=1")
    assert rank0.count("Epoch 1:") == 1 and "Epoch 1:" not in rank1 and "Run directory" not in rank1
    run = tmp_path / "quickstart" / "ddp"
    records = check_one_run(run, [1])
    assert records[0]["lr"] == pytest.approx(2 * 0.05)  # linear scaling by the 2 processes
    assert records[0]["test_acc"] == pytest.approx(student_accuracy(str(run / "student_latest")), abs=1e-4)
    assert load_checkpoint(str(run / "latest"))["epoch"] == 1

    rank0, _ = run_two_processes(tmp_path, *args, "SOLVER.EPOCHS=2", "--resume")
    assert rank0.count("Resumed from") == 1
    records = check_one_run(run, [1, 2])
    latest = load_checkpoint(str(run / "latest"))
    assert latest["epoch"] == 2 and not any(k.startswith("module.") for k in latest["model"])
    assert records[1]["test_acc"] == pytest.approx(student_accuracy(str(run / "student_latest")), abs=1e-4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_launch(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), TRAIN, *common_args(tmp_path, "torchrun"), "SOLVER.EPOCHS=1"],
        cwd=str(tmp_path), env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (out,) = finish([proc])
    assert out.count("Epoch 1:") == 1
    check_one_run(tmp_path / "quickstart" / "torchrun", [1])


def test_resume_before_the_first_checkpoint_starts_over_on_every_process(tmp_path):
    """A scheduler restarting a job stopped before its first checkpoint passes --resume again: the
    run directory holds only cfg.yaml (written when training starts), so both processes agree to
    train from the beginning, with that config, and rank 0 says so in one line."""
    run = tmp_path / "quickstart" / "restarted"
    run.mkdir(parents=True)
    cfg = build_cfg(DIGITS, common_args(tmp_path, "restarted")[2:] + ["SOLVER.EPOCHS=1"])
    (run / "cfg.yaml").write_text(dump_cfg(cfg))
    rank0, rank1 = run_two_processes(tmp_path, "--resume", str(run))
    line = f"No checkpoint at {run / 'latest'} yet: training from the beginning."
    assert rank0.count(line) == 1 and line not in rank1 and "Resumed from" not in rank0
    check_one_run(run, [1])
    assert load_checkpoint(str(run / "latest"))["epoch"] == 1


def test_resume_with_cfg_and_no_run_yet_starts_over(tool_in_process, tmp_path):
    args = common_args(tmp_path, "fresh") + ["SOLVER.EPOCHS=1"]
    proc = tool_in_process(TRAIN, *args, "--resume", cwd=str(tmp_path))   # one process: no need for a fresh one
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "quickstart" / "fresh"
    assert f"No checkpoint at {run / 'latest'} yet: training from the beginning." in proc.stdout
    check_one_run(run, [1])
