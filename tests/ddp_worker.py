"""One process of a multi-process `tools/train.py` run, for tests/test_distributed.py.

    python tests/ddp_worker.py STORE_FILE RANK WORLD_SIZE [tools/train.py arguments ...]

Sets the variables torchrun would (RANK, LOCAL_RANK, WORLD_SIZE), joins a gloo process group
through a FileStore (so no TCP port is opened; gloo's own sockets stay on the interface named by
GLOO_SOCKET_IFNAME, the loopback in the tests), then runs tools/train.py as `python tools/train.py`
(or the tool MDISTILLER_TEST_TOOL names, e.g. tools/train_dense.py).

With MDISTILLER_TEST_NONFINITE=CALL in its environment, the process's CALL-th training forward pass
(of the NONE distiller) returns a NaN cross-entropy, and with MDISTILLER_TEST_SIGTERM=CALL the process
sends itself SIGTERM during that pass (a stop that lands mid-epoch), for tests/test_reliability_processes.py.
"""

import os
import runpy
import signal
import sys

import torch.distributed as dist

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.environ.get("MDISTILLER_TEST_TOOL") or os.path.join(REPO_ROOT, "tools", "train.py")  # or train_dense.py


def at_forward_train(call: int, action) -> None:
    """The NONE distiller's `call`-th forward_train in this process passes its losses through `action`."""
    sys.path.insert(0, REPO_ROOT)
    from mdistiller.distillers import distiller_dict

    cls = distiller_dict["NONE"]
    original, calls = cls.forward_train, [0]

    def forward_train(self, image, target, **batch):
        calls[0] += 1
        logits, losses = original(self, image, target, **batch)
        if calls[0] == call:
            losses = action(losses)
        return logits, losses

    cls.forward_train = forward_train


def poison(losses):
    return dict(losses, loss_ce=losses["loss_ce"] * float("nan"))


def send_sigterm(losses):
    os.kill(os.getpid(), signal.SIGTERM)
    return losses


if __name__ == "__main__":
    store_file, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    if os.environ.get("MDISTILLER_TEST_NONFINITE"):
        at_forward_train(int(os.environ["MDISTILLER_TEST_NONFINITE"]), poison)
    if os.environ.get("MDISTILLER_TEST_SIGTERM"):
        at_forward_train(int(os.environ["MDISTILLER_TEST_SIGTERM"]), send_sigterm)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    sys.argv = [TRAIN, *sys.argv[4:]]
    sys.path.insert(0, os.path.dirname(TRAIN))
    try:
        runpy.run_path(TRAIN, run_name="__main__")
    finally:  # the run leaves a group it did not join itself as it found it
        dist.destroy_process_group()
