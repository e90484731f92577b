"""Training steps taken on 2 processes and on one, for tests/test_ddp_steps.py.

:func:`take_steps` builds a small distiller and its trainer, puts every BatchNorm in eval mode
(batch statistics of half a batch differ from the whole batch's), and takes two training steps (by default)
through `Trainer.train_iter`, on this process's half of each batch when a process group is
joined (rank 0 the first half), on the whole batch otherwise. It returns the distiller's
state_dict, with the student's EMA under ``ema.`` when EMA.ENABLE. tests/ddp_step_worker.py runs
it on each of 2 processes.
"""

from typing import Dict

import torch
from torch import nn

from distiller_step import build
from mdistiller.engine.distributed import rank, world_size
from mdistiller.engine.trainer import trainer_dict

BATCH, NUM_DATA, CLASSES, SIZE, STEPS = 8, 64, 10, 16, 2
CASES = {  # name: (method, trainer, config overrides)
    "DOT_KD": ("KD", "dot", ["SOLVER.TRAINER=dot"]),
    "DOT_AT": ("AT", "dot", ["SOLVER.TRAINER=dot"]),
    "CRD": ("CRD", "base", ["CRD.NCE.K=16", "CRD.FEAT.DIM=16"]),
    "KD_EMA_CLIP": ("KD", "base", ["EMA.ENABLE=True", "EMA.DECAY=0.5", "SOLVER.GRAD_CLIP=0.2"]),
}


def batches(seed: int = 0):
    """STEPS batches of (image, target, index, contrastive_index): the same on every process."""
    generator = torch.Generator().manual_seed(seed)
    for step in range(STEPS):
        index = torch.randperm(NUM_DATA, generator=generator)[:BATCH]
        contrastive = torch.randint(0, NUM_DATA, (BATCH, 17), generator=generator)
        contrastive[:, 0] = index
        yield (torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
               torch.randint(0, CLASSES, (BATCH,), generator=generator), index, contrastive)


def take_steps(name: str, run_dir: str, steps: int = STEPS) -> Dict[str, torch.Tensor]:
    """The distiller's state_dict after `steps` training steps of case `name`."""
    method, trainer_name, opts = CASES[name]
    distiller, cfg = build(method, [*opts, "SOLVER.AMP=False", "SOLVER.DEVICE=cpu", "SOLVER.LR=0.1",
                                    "SOLVER.CHANNELS_LAST=False", f"LOG.PREFIX={run_dir}"],
                           num_classes=CLASSES, num_data=NUM_DATA, size=SIZE)
    trainer = trainer_dict[trainer_name](name, distiller, None, None, cfg, run_dir=run_dir)
    trainer.train_loader = [None] * STEPS  # only its length is read (messages)
    trainer.distiller.train()
    for module in trainer.distiller.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    share = BATCH // world_size()
    part = slice(rank() * share, (rank() + 1) * share)
    for step, (image, target, index, contrastive) in zip(range(steps), batches()):
        extra = {"index": index[part], "contrastive_index": contrastive[part]}
        trainer.train_iter(image[part], target[part], extra, epoch=1, step=step)
    state = {k: v.clone() for k, v in trainer.distiller.state_dict().items()}
    if trainer.ema is not None:
        state.update((f"ema.{k}", v.clone()) for k, v in trainer.ema.module.state_dict().items())
    return state
