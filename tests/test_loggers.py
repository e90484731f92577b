"""Run logs: wandb's call contract (recorded with a stand-in module), the real wandb offline, failures."""

import glob
import json
import os
import struct
import sys
import types
import warnings

import pytest

from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.loggers import WandbLog, read_metrics

from helpers import STUDENT_CFG, make_trainer


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_command_line_overrides_reach_wandb_as_tags(tmp_path, monkeypatch):
    from mdistiller.engine.run import train_run

    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    opts = ["SOLVER.LR=0.02", f"LOG.PREFIX={tmp_path}", "LOG.WANDB=True", "SOLVER.EPOCHS=1", "DATASET.IMAGE_SIZE=8",
            "EXPERIMENT.TAG=digits,t"]
    train_run(build_cfg(STUDENT_CFG, opts), opts, verbose=False)
    assert fake.init_kwargs["tags"] == ["digits", "t", "SOLVER.LR:0.02", "SOLVER.EPOCHS:1", "DATASET.IMAGE_SIZE:8"]


@pytest.mark.slow
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


@pytest.mark.slow
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


def wandb_records(path: str):
    """The protobuf records of a wandb run file (`run-<id>.wandb`): a LevelDB-style log of 32 KiB
    blocks after a 7-byte file header, each chunk with a 7-byte header (CRC, length, type; types 1
    full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, block = open(path, "rb").read(), 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.mark.slow
def test_trainer_with_real_offline_wandb_writes_what_it_logged(tmp_path, monkeypatch, torch_single_thread):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = make_trainer(tmp_path, "SOLVER.EPOCHS=2", "LOG.WANDB=True", "EXPERIMENT.TAG=digits,offline")
    trainer.train()
    [run_file] = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, summary, runs = [], {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind == "run":
            runs.append(record.run)
    logged = read_metrics(str(tmp_path / "run"))
    assert [r["epoch"] for r in logged] == [1, 2] and len(history) == 2
    for written, read in zip(logged, history):
        for key, value in written.items():
            if key != "epoch":
                assert read[key] == pytest.approx(value, rel=1e-12), key
    assert summary["best_acc"] == pytest.approx(trainer.best_acc, rel=1e-12)
    assert runs and list(runs[0].tags) == ["digits", "offline"]
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["SOLVER"]["EPOCHS"] == 2 and config["DATASET"]["TYPE"] == "digits"
