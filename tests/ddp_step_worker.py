"""One of 2 processes taking the steps of tests/ddp_steps.py for each case named.

    python tests/ddp_step_worker.py STORE_FILE RANK WORLD_SIZE OUT_DIR CASE [CASE ...]

Joins a gloo group through a FileStore and writes ``OUT_DIR/<case>_rank<R>.pt`` (the state_dict).
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddp_steps import take_steps  # noqa: E402

if __name__ == "__main__":
    store_file, rank, world, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    for name in sys.argv[5:]:
        torch.save(take_steps(name, os.path.join(out, f"run_{name}_{rank}")), os.path.join(out, f"{name}_rank{rank}.pt"))
    dist.destroy_process_group()
