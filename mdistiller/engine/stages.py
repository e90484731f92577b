"""The stages of a run: work a method declares to be done before its training, which the engine runs.

A distiller lists stage names in its ``stages`` class attribute (FreeKD: ``("PROMPTS",)``); each name
is a :class:`Stage` in ``stage_dict``. Before training, the engine asks every declared stage whether
its output is there (:meth:`Stage.done`) and runs the ones whose output is missing or unfinished,
in order, then trains the method, which reads those outputs when it is built. A stage is a run of
its own: it has its run directory, writes ``cfg.yaml`` with ``EXPERIMENT.STAGE`` set to its name (so
every record says which stage made it), and resumes from its ``latest`` checkpoint.

The built-in stage, ``"PROMPTS"`` (frequency prompts in the frozen teacher), is in
:mod:`mdistiller.engine.prompt_learning`; mdistiller_dense adds ``"DENSE_PROMPTS"``. A package of
one's own registers a stage the same way: ``@stage_dict.register("NAME")`` on a :class:`Stage`.
"""

from typing import Dict, List, Sequence

from torch import nn
from yacs.config import CfgNode as CN

from mdistiller.registry import Registry

__all__ = ["Stage", "stage_dict", "stages_of"]

stage_dict = Registry("stage")

class Stage:
    """One stage before a method's training. The contract:

    - :meth:`output`: the file the stage writes, which the method reads;
    - :meth:`done`: whether that file is there and finished (the engine then skips the stage);
    - :meth:`run`: do the work (resuming from the stage's own ``latest`` when `resume` is True and
      one exists), write :meth:`output`, return its path;
    - :meth:`epochs_key`: the config key of the stage's length in epochs (tools that shorten a run
      shorten the stage with it);
    - :meth:`stand_in`: a freshly initialised output, for timing and tests where the stage's training
      does not matter; returns the config overrides that make the method read it.
    """

    name: str = ""  # what EXPERIMENT.STAGE says in the stage's records

    def output(self, cfg: CN) -> str:
        raise NotImplementedError

    def done(self, cfg: CN) -> bool:
        raise NotImplementedError

    def run(self, cfg: CN, resume: bool = False, verbose: bool = True) -> str:
        raise NotImplementedError

    def epochs_key(self, cfg: CN) -> str:
        raise NotImplementedError

    def stand_in(self, cfg: CN, teacher: nn.Module, directory: str) -> Dict[str, str]:
        raise NotImplementedError


def stages_of(names: Sequence[str]) -> List[Stage]:
    """The registered stages of a distiller's ``stages`` names, in order (UnknownNameError otherwise)."""
    return [stage_dict.get(name)() for name in names]
