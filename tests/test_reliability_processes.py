"""Clean stops and non-finite losses in real processes: tools/train.py stopped by SIGINT finishes its
step, saves `latest`, prints how to resume and exits 130, and that very command finishes the run;
on two processes (DDP, gloo) a SIGTERM to one rank stops both at the same step with one `latest`,
and a NaN on one rank stops both with exit status 2 and one error line, `latest` untouched. A
deadlock would show as a timeout."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.engine.loggers import read_metrics

from helpers import WORKER, assert_user_error, communicate_all, process_env

pytestmark = pytest.mark.e2e

DIGITS = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")
TIMEOUT = 240
SIGTERM_CALL = 30


def args(tmp_path, name):
    return ["--cfg", DIGITS, f"LOG.PREFIX={tmp_path}", f"EXPERIMENT.NAME={name}", "DATASET.IMAGE_SIZE=8",
            "SOLVER.AMP=False", "SOLVER.BATCH_SIZE=32", "SOLVER.EPOCHS=100"]


def wait_for_first_epoch(run, procs):
    """Wait until the run has logged an epoch (so training is under way)."""
    deadline = time.time() + TIMEOUT
    while not read_metrics(str(run)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.2)


def outputs(procs):
    return communicate_all(procs, TIMEOUT)


def start_ranks(tmp_path, *train_args, env=None):
    store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"
    return [subprocess.Popen([sys.executable, WORKER, str(store), str(rank), "2", *train_args], cwd=str(tmp_path),
                             env=dict(process_env(), **(env or {}).get(rank, {})), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def test_sigint_stops_cleanly_and_the_printed_command_resumes(tmp_path):
    run = tmp_path / "quickstart" / "stop"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), *args(tmp_path, "stop")],
                            cwd=str(tmp_path), env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_first_epoch(run, [proc])
    proc.send_signal(signal.SIGINT)
    [(code, out, err)] = outputs([proc])
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "SIGINT received: stopping after this step" in err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"Stopped by SIGINT at (?:epoch (\d+) step (\d+)/\d+|the end of epoch (\d+)); "
                         r"'latest' saved in (\S+)\. Resume with: python (tools/train.py --resume \S+)", last)
    assert found, last
    latest = load_checkpoint(str(run / "latest"))
    if found.group(1):
        assert (latest["epoch"] + 1, latest["progress"]["step"]) == (int(found.group(1)), int(found.group(2)))
    else:
        assert latest["epoch"] == int(found.group(3)) and "progress" not in latest
    finish = latest["epoch"] + 1
    command = shlex.split(found.group(5).replace("tools/train.py", os.path.join(REPO_ROOT, "tools", "train.py")))
    resumed = subprocess.run([sys.executable, *command, f"SOLVER.EPOCHS={finish}"], cwd=str(tmp_path),
                             env=process_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    assert [r["epoch"] for r in read_metrics(str(run))] == list(range(1, finish + 1))
    assert load_checkpoint(str(run / "latest"))["epoch"] == finish


def test_two_processes_stop_together_and_fail_together(tmp_path):
    run = tmp_path / "quickstart" / "ddp"
    # SIGTERM to rank 1 only, during its 30th step (in epoch 2: an epoch is 23 steps per rank); the
    # other rank learns it in the step's all-reduce.
    procs = start_ranks(tmp_path, *args(tmp_path, "ddp"), env={1: {"MDISTILLER_TEST_SIGTERM": str(SIGTERM_CALL)}})
    (code0, _, err0), (code1, _, err1) = outputs(procs)
    assert (code0, code1) == (128 + signal.SIGTERM,) * 2, err0[-2000:] + err1[-2000:]
    last = err0.strip().splitlines()[-1]
    stop = re.search(r"Stopped by SIGTERM at epoch (\d+) step (\d+)/(\d+);", last)
    assert stop and "under the same torchrun command" in last, last
    epoch, step, steps = map(int, stop.groups())
    assert (epoch - 1) * steps + step == SIGTERM_CALL and step < steps  # the step it was sent in, mid-epoch
    assert "Traceback" not in err0 + err1
    assert not [name for name in os.listdir(run) if name.startswith(".tmp_")]
    latest_bytes = (run / "latest").read_bytes()
    latest = load_checkpoint(str(run / "latest"))
    assert (latest["epoch"], latest["progress"]["epoch"], latest["progress"]["step"]) == (epoch - 1, epoch, step)
    assert len(latest["rng_ranks"]) == 2

    # resumed with a NaN loss on rank 1 only, at its third step: both stop, before any backward pass
    finish = latest["epoch"] + 2
    procs = start_ranks(tmp_path, "--resume", str(run), f"SOLVER.EPOCHS={finish}",
                        env={1: {"MDISTILLER_TEST_NONFINITE": "3"}})
    (code0, _, err0), (code1, _, err1) = outputs(procs)
    assert code1 == 2, err1[-3000:]
    assert_user_error(subprocess.CompletedProcess([], code0, "", err0), "Non-finite loss loss_ce (on another process)",
                      "step", "holds the last good state")
    assert (run / "latest").read_bytes() == latest_bytes
