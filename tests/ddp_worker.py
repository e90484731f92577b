"""One process of a multi-process `tools/train.py` run, for tests/test_distributed.py.

    python tests/ddp_worker.py STORE_FILE RANK WORLD_SIZE [tools/train.py arguments ...]

Sets the variables torchrun would (RANK, LOCAL_RANK, WORLD_SIZE), joins a gloo process group
through a FileStore (so no TCP port is opened; gloo's own sockets stay on the interface named by
GLOO_SOCKET_IFNAME, the loopback in the tests), then runs tools/train.py as `python tools/train.py`.
"""

import os
import runpy
import sys

import torch.distributed as dist

TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "train.py")

if __name__ == "__main__":
    store_file, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    sys.argv = [TRAIN, *sys.argv[4:]]
    sys.path.insert(0, os.path.dirname(TRAIN))
    runpy.run_path(TRAIN, run_name="__main__")
