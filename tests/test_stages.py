"""The engine runs the stages a method declares: in order, each only while its output is missing,
under torchrun in every process, each on its shard (tests/test_ddp_matrix.py)."""

import os

import pytest

from mdistiller.distillers import Distiller
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.run import run_stages
from mdistiller.engine.stages import Stage, stage_dict
from mdistiller.errors import UnknownNameError
from mdistiller.registry import Registry

RAN = []


class FileStage(Stage):
    """Writes `<LOG.PREFIX>/<name>.txt`; done when it is there."""

    def output(self, cfg):
        return os.path.join(cfg.LOG.PREFIX, f"{self.name}.txt")

    def done(self, cfg):
        return os.path.isfile(self.output(cfg))

    def run(self, cfg, resume=False, verbose=True):
        RAN.append((self.name, resume))
        with open(self.output(cfg), "w") as f:
            f.write("ok")
        return self.output(cfg)


@stage_dict.register("TEST_FIRST")
class FirstStage(FileStage):
    name = "TEST_FIRST"


@stage_dict.register("TEST_SECOND")
class SecondStage(FileStage):
    name = "TEST_SECOND"


class TwoStageMethod(Distiller):
    stages = ("TEST_FIRST", "TEST_SECOND")


def methods(cls=TwoStageMethod) -> Registry:
    registry = Registry("distiller")
    registry.register("TWO", cls)
    return registry


def test_declared_stages_run_in_order_once(tmp_path):
    RAN.clear()
    cfg = build_cfg(None, [f"LOG.PREFIX={tmp_path}"])
    cfg.defrost()
    cfg.DISTILLER.TYPE = "TWO"
    (tmp_path / "TEST_FIRST.txt").write_text("made before")  # the first stage's output is already there
    assert run_stages(cfg, methods(), resume=True, verbose=False) == ["TEST_SECOND"]
    assert RAN == [("TEST_SECOND", True)]
    assert run_stages(cfg, methods(), verbose=False) == [] and len(RAN) == 1


def test_an_unknown_stage_name_fails_naming_the_known_ones(tmp_path):
    class Misspelt(Distiller):
        stages = ("PROMPT",)

    cfg = build_cfg(None, [f"LOG.PREFIX={tmp_path}"])
    cfg.defrost()
    cfg.DISTILLER.TYPE = "TWO"
    with pytest.raises(UnknownNameError, match="Unknown stage 'PROMPT'. Did you mean PROMPTS"):
        run_stages(cfg, methods(Misspelt), verbose=False)
