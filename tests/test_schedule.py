import math

import pytest

from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.schedule import iteration_learning_rate, learning_rate
from mdistiller.errors import ConfigError
from mdistiller_dense.config import build_dense_cfg


def test_step_schedule_as_mdistiller():
    solver = build_cfg(None, ["SOLVER.LR=0.05"]).SOLVER
    expected = {1: 0.05, 150: 0.05, 151: 0.005, 180: 0.005, 181: 0.0005, 211: 0.00005, 240: 0.00005}
    for epoch, lr in expected.items():
        assert learning_rate(epoch, solver) == pytest.approx(lr)


def test_cosine_with_warmup():
    solver = build_cfg(None, ["SOLVER.LR_SCHEDULER=cosine", "SOLVER.WARMUP_EPOCHS=2", "SOLVER.EPOCHS=12",
                              "SOLVER.LR=1.0"]).SOLVER
    assert learning_rate(1, solver) == pytest.approx(0.5)
    assert learning_rate(2, solver) == pytest.approx(1.0)
    assert learning_rate(3, solver) == pytest.approx(1.0)
    assert learning_rate(8, solver) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert learning_rate(12, solver) < learning_rate(11, solver)


def test_unknown_scheduler():
    solver = build_cfg(None, ["SOLVER.LR_SCHEDULER=linear"]).SOLVER
    with pytest.raises(ConfigError, match="LR_SCHEDULER must be one of step, cosine, poly, got 'linear'"):
        learning_rate(1, solver)


def test_cosine_ends_at_min_lr():
    """timm's cosine with min_lr (OFA's recipes: 0.05 down to 1e-3), written out per epoch."""
    solver = build_cfg(None, ["SOLVER.LR_SCHEDULER=cosine", "SOLVER.WARMUP_EPOCHS=3", "SOLVER.EPOCHS=13",
                              "SOLVER.LR=0.05", "SOLVER.MIN_LR=0.001"]).SOLVER
    assert learning_rate(1, solver) == pytest.approx(0.05 / 3)
    assert learning_rate(4, solver) == pytest.approx(0.05)
    assert learning_rate(9, solver) == pytest.approx(0.001 + 0.049 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert learning_rate(13, solver) == pytest.approx(0.001 + 0.049 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert min(learning_rate(e, solver) for e in range(4, 14)) > 0.001


def test_poly_per_iteration_as_mmsegmentation():
    """mmcv's PolyLrUpdaterHook (power 0.9, min_lr 1e-4, by iteration) over an 80k run, written out."""
    solver = build_dense_cfg(None, ["SOLVER.LR_SCHEDULER", "poly", "SOLVER.LR", "0.01", "SOLVER.ITERS", "80000"]).SOLVER
    for iteration in (0, 1, 8000, 40000, 79999, 80000):
        expected = (0.01 - 1e-4) * (1 - iteration / 80000) ** 0.9 + 1e-4
        assert iteration_learning_rate(iteration, solver) == pytest.approx(expected, rel=1e-12)
    assert iteration_learning_rate(0, solver) == pytest.approx(0.01)
    assert iteration_learning_rate(40000, solver) == pytest.approx(0.0099 * 0.5**0.9 + 1e-4)
    assert iteration_learning_rate(80000, solver) == pytest.approx(1e-4)


def test_poly_per_epoch_and_step_by_iteration():
    solver = build_cfg(None, ["SOLVER.LR_SCHEDULER=poly", "SOLVER.LR=1.0", "SOLVER.EPOCHS=10",
                              "SOLVER.POLY_POWER=2.0", "SOLVER.POLY_MIN_LR=0.0"]).SOLVER
    assert learning_rate(1, solver) == pytest.approx(1.0)
    assert learning_rate(6, solver) == pytest.approx(0.5**2)
    step = build_dense_cfg(None, ["SOLVER.LR", "1.0", "SOLVER.LR_DECAY_STAGES", "[100, 150]", "SOLVER.ITERS", "200",
                                  "SOLVER.LR_SCHEDULER", "step"]).SOLVER
    assert [iteration_learning_rate(i, step) for i in (0, 99, 100, 149, 150)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01])
