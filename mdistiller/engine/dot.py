"""DOT: Zhao et al., "DOT: A Distillation-Oriented Trainer" (ICCV 2023).

SGD with two momentum buffers per parameter: the task-loss gradient (`loss_ce`) accumulates with
momentum `MOMENTUM - DELTA`, the distillation-loss gradient (every other loss term) with
`MOMENTUM + DELTA`; a parameter that receives only one kind of gradient in a step uses the mean
of the two, `MOMENTUM`. Select it with `SOLVER.TRAINER dot` (MDistiller's `crd_dot` is the same
trainer here: batches already carry CRD's indices).
"""

import contextlib
from typing import Dict, List, Optional, Sequence

import torch
from torch.optim import Optimizer

from mdistiller.engine.distributed import average_gradients
from mdistiller.engine.optim import weight_decay_groups
from mdistiller.engine.trainer import Losses, Trainer, trainer_dict
from mdistiller.errors import ConfigError

TASK_LOSS = "loss_ce"


class DistillationOrientedTrainer(Optimizer):
    """The DOT optimizer (MDistiller's name). Per step:

        optimizer.zero_grad(set_to_none=True); loss_kd.backward(retain_graph=True); optimizer.step_kd()
        optimizer.zero_grad(set_to_none=True); loss_task.backward(); optimizer.step()

    `step_kd` keeps the distillation gradients; `step` applies both updates, as MDistiller does:

    - task gradient `g + wd * p` into `momentum_buffer` with `momentum` when the parameter also
      has a distillation gradient, else with `(momentum + momentum_kd) / 2`; `p -= lr * buffer`;
    - distillation gradient into `momentum_kd_buffer` with `momentum_kd` when the parameter also
      has a task gradient (weight decay already applied), else `g + wd * p` with the mean momentum;
      `p -= lr * buffer`.

    A buffer starts as the first gradient it receives (no weight decay in the first distillation
    step, as in MDistiller). Both buffers live in `state`, so `state_dict()` carries them.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, momentum_kd: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("momentum_kd", momentum_kd),
                            ("weight_decay", weight_decay)):
            if value < 0.0:
                raise ValueError(f"Invalid {name}: {value}")
        super().__init__(params, dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd, weight_decay=weight_decay))
        self._kd_grads: Dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step_kd(self) -> None:
        """Keep the current gradients as the distillation gradients of the next `step`."""
        self._kd_grads = {p: p.grad for group in self.param_groups for p in group["params"] if p.grad is not None}

    @staticmethod
    def _accumulate(state: dict, key: str, grad: torch.Tensor, momentum: float) -> torch.Tensor:
        buffer = state.get(key)
        if buffer is None:
            buffer = state[key] = torch.clone(grad).detach()
        else:
            buffer.mul_(momentum).add_(grad)
        return buffer

    @torch.no_grad()
    def step(self, closure=None) -> Optional[torch.Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads, self._kd_grads = self._kd_grads, {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            both, mean = group["momentum"], (group["momentum"] + group["momentum_kd"]) / 2.0
            task_params: List[torch.Tensor] = [p for p in group["params"] if p.grad is not None]
            for p in task_params:
                grad = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                momentum = both if p in kd_grads else mean
                p.add_(self._accumulate(self.state[p], "momentum_buffer", grad, momentum), alpha=-lr)
            task_set = set(task_params)
            for p in group["params"]:
                if p not in kd_grads:
                    continue
                grad, state = kd_grads[p], self.state[p]
                if p in task_set:
                    momentum = group["momentum_kd"]
                else:
                    momentum = mean
                    if wd != 0 and "momentum_kd_buffer" in state:
                        grad = grad.add(p, alpha=wd)
                p.add_(self._accumulate(state, "momentum_kd_buffer", grad, momentum), alpha=-lr)
        return loss


def set_averaged_grads(params: List[torch.Tensor], grads: Sequence[Optional[torch.Tensor]]) -> None:
    """`param.grad = grad` for each pair, the gradients first averaged over processes."""
    average_gradients(grads)
    for p, grad in zip(params, grads):
        p.grad = grad


class DOTTrainer(Trainer):
    """The base trainer with DOT's two-backward step; `loss_ce` is the task loss, every other
    term the distillation loss."""

    def init_optimizer(self) -> Optimizer:
        solver = self.cfg.SOLVER
        if solver.TYPE != "SGD":
            raise ConfigError(f"SOLVER.TRAINER dot needs SOLVER.TYPE SGD, got '{solver.TYPE}'.")
        if solver.GRAD_CLIP > 0:
            raise ConfigError("SOLVER.TRAINER dot does not clip gradients (its two gradients take separate momentum "
                              "steps); set SOLVER.GRAD_CLIP 0.")
        return DistillationOrientedTrainer(
            weight_decay_groups(self.distiller.get_learnable_parameters(), solver, self.distiller), lr=solver.LR,
            momentum=solver.MOMENTUM - solver.DOT.DELTA, momentum_kd=solver.MOMENTUM + solver.DOT.DELTA,
            weight_decay=solver.WEIGHT_DECAY,
        )

    def forward_context(self):
        """DDP's `no_sync`: this trainer reduces its two gradients itself (`backward_and_step`)."""
        no_sync = getattr(self.train_model, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def backward_and_step(self, losses: Losses) -> None:
        """The distillation gradient, then the task gradient, each by `torch.autograd.grad` and
        averaged over processes by hand (one all-reduce each), then DOT's step: on every process
        the update of one process on the concatenated batch."""
        if TASK_LOSS not in losses:
            raise ConfigError(f"SOLVER.TRAINER dot needs a '{TASK_LOSS}' loss term; "
                              f"{self.cfg.DISTILLER.TYPE} gives {', '.join(losses)}.")
        if self.scaler.is_enabled():
            raise ConfigError("SOLVER.TRAINER dot does not support float16 autocast; "
                              "set SOLVER.AMP_DTYPE bfloat16 or SOLVER.AMP False.")
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        distill = [value for name, value in losses.items() if name != TASK_LOSS]
        self.optimizer.zero_grad(set_to_none=True)
        if distill:
            set_averaged_grads(params, torch.autograd.grad(sum(distill), params, retain_graph=True, allow_unused=True))
            self.optimizer.step_kd()
            self.optimizer.zero_grad(set_to_none=True)
        set_averaged_grads(params, torch.autograd.grad(losses[TASK_LOSS], params, allow_unused=True))
        self.optimizer.step()
        self.update_ema()


trainer_dict.register("dot", DOTTrainer)
trainer_dict.register("crd_dot", DOTTrainer)
