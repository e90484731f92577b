import math

import pytest

from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.schedule import learning_rate
from mdistiller.errors import ConfigError


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
    solver = build_cfg(None, ["SOLVER.LR_SCHEDULER=poly"]).SOLVER
    with pytest.raises(ConfigError, match="LR_SCHEDULER must be one of step, cosine"):
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
