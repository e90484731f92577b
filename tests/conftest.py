import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, cwd=REPO_ROOT, env=None, timeout=600):
    """Run `python tools/<args>` as a user would; returns the CompletedProcess (text output)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def tool():
    return run_tool


@pytest.fixture
def e2e_full():
    """True when the end-to-end tests should run at full size (make test-full)."""
    return os.environ.get("MDISTILLER_E2E") == "full"


@pytest.fixture
def torch_single_thread():
    """One intra-op thread for the test: tiny tensors gain nothing from more, and on a shared
    machine OpenMP threads waiting for busy cores slow small ops down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
