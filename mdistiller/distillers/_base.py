"""The distiller base class and the registry every method adds itself to."""

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import Rules
from mdistiller.registry import Registry

distiller_dict = Registry("distiller")
method_defaults: Dict[str, CN] = {}
method_rules: Dict[str, Rules] = {}


def registrar(registry: Registry, defaults_of: Dict[str, CN], rules_of: Dict[str, Rules]):
    """A ``register(name, defaults=None, rules=None)`` class decorator adding to `registry`,
    `defaults_of` and `rules_of` (the section's value checks, keys relative to the section:
    mdistiller/config_checks.py)."""

    def register(name: str, defaults: Optional[CN] = None, rules: Optional[Rules] = None):
        def add(cls):
            registry.register(name, cls)
            if defaults is not None:
                defaults_of[name] = defaults
            if rules:
                rules_of[name] = rules
            return cls

        return add

    return register


register_distiller = registrar(distiller_dict, method_defaults, method_rules)
register_distiller.__doc__ = ("Class decorator: registers a distiller under `name`, its config section `cfg.<name>` "
                              "and the checks of that section's values (`rules`).")


class Distiller(nn.Module):
    """A student, a frozen teacher and the modules a method adds between them.

    Subclasses implement `forward_train(image, target, **batch) -> (logits, {name: loss})`.
    The teacher is kept in eval mode with `requires_grad` off; its parameters never learn.

    Class attributes read by the trainer:

    - `fast_teacher`: `teacher_forward` may run an inference copy of the teacher with BatchNorm
      folded into its convolutions (mdistiller/engine/fast_teacher.py; SOLVER.FAST_TEACHER). Its
      outputs (logits, feats, preact_feats, pooled_feat) equal the teacher's up to rounding, but its
      modules are not the teacher's: set False in a method that reads teacher internals another way
      (module attributes set during forward, hooks added after the first step). The copy is skipped
      on its own while the teacher is in train mode or has forward hooks.
    - `ddp_find_unused_parameters`: set True when some learnable module does not take part in every
      step (passed to DistributedDataParallel).
    - `stages`: names of the stages (mdistiller/engine/stages.py) the engine runs, in order, before
      this method trains, e.g. FreeKD's ``("PROMPTS",)``: frequency prompts learned in the frozen
      teacher. Each writes a file the method reads when it is built. None by default.
    - `batch_fields`: per-sample data the method needs beside image and target, by name; the data
      pipeline adds each to the batch and the trainer passes it to `forward_train` as a keyword
      argument. ``"index"`` (the sample's position in the training set) is always there; CRD adds
      ``"contrastive_index"`` (its negative samples).

    Set by the trainer:

    - `inference_teacher`: the teacher's fast inference copy (mdistiller/engine/fast_path.py), or None.
    """

    fast_teacher: bool = True
    ddp_find_unused_parameters: bool = False
    stages: Tuple[str, ...] = ()
    batch_fields: Tuple[str, ...] = ()

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.inference_teacher: Optional[Callable[[torch.Tensor], Tuple[torch.Tensor, dict]]] = None
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def distiller_modules(self) -> List[nn.Module]:
        """The learnable modules a method adds beside the student (none by default)."""
        return [m for name, m in self.named_children() if name not in ("student", "teacher")]

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        params = list(self.student.parameters())
        for module in self.distiller_modules():
            params += [p for p in module.parameters() if p.requires_grad]
        return params

    def get_extra_parameters(self) -> int:
        """Number of parameters the method adds beside the student."""
        return sum(p.numel() for m in self.distiller_modules() for p in m.parameters())

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **batch):
        raise NotImplementedError

    def forward_test(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)[0]

    @torch.no_grad()
    def teacher_forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """The teacher's logits and features, computed without building a graph.

        Goes through the trainer's fast inference copy when one is installed and `fast_teacher` is on.
        """
        if self.inference_teacher is not None and self.fast_teacher:
            return self.inference_teacher(image)
        return self.teacher(image)

    def forward(self, **kwargs):
        if self.training:
            return self.forward_train(**kwargs)
        return self.forward_test(kwargs["image"])


