"""Run logs: wandb's call contract (recorded with a stand-in module), the real wandb offline, failures."""

import os
import sys
import types
import warnings

import pytest

from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.loggers import WandbLog

from helpers import make_trainer


class RecordingWandb(types.ModuleType):
    """Stands in for the `wandb` module and records what the trainer asks of it."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__("wandb")
        self.fail = fail
        self.init_kwargs = None
        self.logged = []
        self.finished = False

    def init(self, **kwargs):
        if self.fail:
            raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login()")
        self.init_kwargs = kwargs
        recorder = self

        class Run:
            id = "abc123"
            summary = {}

            def log(self, metrics, step):
                recorder.logged.append((step, dict(metrics)))

            def finish(self):
                recorder.finished = True

        self.run = Run()
        return self.run


def test_trainer_calls_wandb_once_per_epoch_with_the_whole_config(tmp_path, monkeypatch):
    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    trainer = make_trainer(tmp_path, "SOLVER.EPOCHS=2", "LOG.WANDB=True", "EXPERIMENT.TAG=digits,t")
    trainer.train()
    config = fake.init_kwargs["config"]
    assert config["SOLVER"]["EPOCHS"] == 2 and config["DATASET"]["TYPE"] == "digits" and "KD" in config
    assert fake.init_kwargs["tags"] == ["digits", "t"] and fake.init_kwargs["project"] == "quickstart"
    assert [step for step, _ in fake.logged] == [1, 2]
    assert {"test_acc", "train_loss", "lr"} <= set(fake.logged[0][1])
    assert fake.run.summary["best_acc"] == trainer.best_acc == max(m["test_acc"] for _, m in fake.logged)
    assert fake.finished
    assert trainer.wandb_id == "abc123"


def test_wandb_failure_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", RecordingWandb(fail=True))
    trainer = make_trainer(tmp_path, "SOLVER.EPOCHS=1", "LOG.WANDB=True")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught if "wandb" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "api_key not configured" in messages[0] and "WANDB_MODE=offline" in messages[0]
    assert (tmp_path / "run" / "latest").is_file()


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_real_wandb_without_network(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = build_cfg(None, ["EXPERIMENT.PROJECT=p"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback warning would mean wandb failed
        log = WandbLog(cfg, str(tmp_path), "p/run", ["t"])
        assert log.run is not None
        log.log(1, {"test_acc": 50.0}, 50.0)
        log.log(2, {"test_acc": 60.0}, 60.0)
        log.finish()
    if mode == "offline":
        runs = os.listdir(tmp_path / "wandb")
        assert any(name.startswith("offline-run-") for name in runs), runs
