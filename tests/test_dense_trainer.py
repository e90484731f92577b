"""The dense trainer's iteration warm-up: the LR each optimisation step runs with, against
mmdetection's linear warm-up formula written out here."""

import pytest

from dense_helpers import dense_cfg
from mdistiller.engine import trainer as engine_trainer
from mdistiller.engine.schedule import linear_warmup_factor
from mdistiller_dense.build import build_dense_run
from mdistiller_dense.trainer import DenseTrainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_linear_warmup_factor_by_hand():
    assert linear_warmup_factor(0, 500, 0.001) == pytest.approx(0.001)
    assert linear_warmup_factor(250, 500, 0.001) == pytest.approx(0.001 + 0.999 / 2)
    assert linear_warmup_factor(499, 500, 0.001) == pytest.approx(1 - 0.999 / 500)
    assert linear_warmup_factor(500, 500, 0.001) == 1.0 and linear_warmup_factor(9000, 500, 0.001) == 1.0


def test_warmup_counts_iterations_across_epochs(tmp_path, monkeypatch):
    # 8 images in batches of 2: 4 iterations an epoch; 6 warm-up iterations reach into epoch 2.
    cfg = dense_cfg(tmp_path, "NONE", extra=["SOLVER.LR", "0.02", "SOLVER.WARMUP_ITERS", "6",
                                             "SOLVER.WARMUP_RATIO", "0.1", "SOLVER.LR_DECAY_STAGES", "[2]"])
    train_loader, val_loader, distiller = build_dense_run(cfg)
    trainer = DenseTrainer("warmup", distiller, train_loader, val_loader, cfg, run_dir=str(tmp_path / "run"))
    assert len(trainer.train_loader) == 4
    seen = []
    monkeypatch.setattr(engine_trainer.Trainer, "train_iter",
                        lambda self, *args: seen.append(self.optimizer.param_groups[0]["lr"]))
    for epoch in (1, 2, 3):
        for group in trainer.optimizer.param_groups:   # what train_epoch sets at an epoch's start
            group["lr"] = 0.02 if epoch < 3 else 0.002
        for step in range(4):
            trainer.train_iter(None, None, {}, epoch, step)
    expected = [0.02 * (0.1 + 0.9 * i / 6) for i in range(6)] + [0.02, 0.02] + [0.002] * 4
    assert seen == pytest.approx(expected)
    assert all(g["lr"] == pytest.approx(0.002) for g in trainer.optimizer.param_groups)
