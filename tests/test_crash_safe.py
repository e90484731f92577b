"""Crash-safe checkpoint writes: a writer process killed with SIGKILL at random moments, again and
again, always leaves a `latest` that loads and is whole (the previous one or the new one); the
temporary files such kills leave are removed at the next run's start."""

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

from mdistiller.engine.checkpoint import TMP_PREFIX, load_checkpoint, remove_stale_temporaries, save_checkpoint

NUMEL = 1_000_000  # 4 MB: a write takes long enough for kills to land inside it


def checkpoint(number: int) -> dict:
    return {"epoch": number, "model": {"w": torch.full((NUMEL,), float(number))}, "cfg": f"N: {number}\n"}


def write_forever(path: str, first: int) -> None:
    torch.set_num_threads(1)
    number = first
    while True:
        save_checkpoint(checkpoint(number), path)
        number += 1


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_latest_loadable(tmp_path):
    path = str(tmp_path / "latest")
    save_checkpoint(checkpoint(0), path)
    context = multiprocessing.get_context("fork")
    draw = random.Random(0)
    last, torn_writes, rounds = 0, 0, 0
    # Kill until several kills landed inside a write and writes completed between them (a loaded
    # machine needs more rounds); every round checks the invariant.
    while (torn_writes < 3 or last < 3) and rounds < 200:
        rounds += 1
        writer = context.Process(target=write_forever, args=(path, last + 1), daemon=True)
        writer.start()
        time.sleep(draw.uniform(0.0, 0.3))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        state = load_checkpoint(path)
        number = state["epoch"]
        assert number >= last and state["cfg"] == f"N: {number}\n"
        assert torch.equal(state["model"]["w"], torch.full((NUMEL,), float(number)))
        leftovers = [name for name in os.listdir(tmp_path) if name.startswith(TMP_PREFIX)]
        torn_writes += bool(leftovers)
        remove_stale_temporaries(str(tmp_path))
        assert os.listdir(tmp_path) == ["latest"]
        last = number
    assert torn_writes >= 3  # kills landed in the middle of writes
    assert last >= 3  # and writes did complete between them
