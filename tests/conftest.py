import contextlib
import io
import os
import runpy
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


def run_tool_in_process(script, *args, cwd=REPO_ROOT, env=None, timeout=None):
    """Run `python <script> <args>` in this process (runpy, as `python` runs a script), for tests that
    need no fresh process: the package's imports (~4 s a start here) are paid once per session.

    Same call and result as `run_tool` (exit status, stdout, stderr); every tool keeps at least one
    test that runs it as a real subprocess. The working directory, environment, `sys.argv`,
    `sys.path` and the torch settings a run changes (threads, deterministic algorithms, cuDNN
    autotuner) are put back afterwards. `timeout` is accepted for the same signature and not enforced.
    """
    saved_env, saved_argv, saved_path, cwd_before = dict(os.environ), sys.argv, list(sys.path), os.getcwd()
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv = [script, *args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # where `python script` looks first
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1], warn_only=saved_torch[2])
        torch.backends.cudnn.benchmark = saved_torch[3]
    return subprocess.CompletedProcess([sys.executable, script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def tool():
    return run_tool


@pytest.fixture
def tool_in_process():
    return run_tool_in_process


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
