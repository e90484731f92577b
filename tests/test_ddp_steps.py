"""Two processes taking a step on half a batch each equal one process taking it on the whole batch.

- DOT (KD and AT): both of DOT's gradients are averaged over the processes, so after two steps
  (both momentum buffers in use) every rank holds the one-process weights;
- CRD: the memory banks of every rank are written with the embeddings of every rank, so they
  equal each other and the one-process banks (and Z, fixed from the first batch, is the
  one-process Z);
- KD with EMA.ENABLE and SOLVER.GRAD_CLIP: the clip acts on the averaged gradients and the EMA
  follows the bare student, so both are the one-process ones on every rank.

BatchNorm is in eval mode (tests/ddp_steps.py). The ranks are compared exactly; against one
process, up to float rounding (a sum over two halves versus over the whole batch).
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from ddp_steps import CASES, take_steps
from helpers import finish, process_env

pytestmark = pytest.mark.e2e

WORKER = os.path.join(REPO_ROOT, "tests", "ddp_step_worker.py")


@pytest.fixture(scope="module")
def two_process_states(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_steps")
    procs = [subprocess.Popen([sys.executable, WORKER, str(out / "store"), str(rank), "2", str(out), *CASES],
                              env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    finish(procs, timeout=300)
    return {name: [torch.load(out / f"{name}_rank{rank}.pt", weights_only=True) for rank in (0, 1)] for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_step_as_one_process_on_the_whole_batch(name, two_process_states, tmp_path,
                                                              torch_single_thread):
    rank0, rank1 = two_process_states[name]
    single = take_steps(name, str(tmp_path))
    assert rank0.keys() == rank1.keys() == single.keys()
    for key, value in single.items():
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the ranks"
        if value.is_floating_point():
            torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-6, msg=key)
    initial = take_steps(name, str(tmp_path / "initial"), steps=0)
    moved = [k for k, v in single.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert moved, "the steps changed nothing"
    if name == "CRD":
        assert {"contrast.memory_v1", "contrast.memory_v2", "contrast.params"} <= set(moved)
