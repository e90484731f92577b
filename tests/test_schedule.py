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
    with pytest.raises(ConfigError, match=r"^SOLVER.LR_SCHEDULER 'linear' is not one of step, cosine, poly.$"):
        build_cfg(None, ["SOLVER.LR_SCHEDULER=linear"])
    solver = build_cfg().SOLVER.clone()
    solver.defrost()
    solver.LR_SCHEDULER = "linear"   # a config built without the merge's checks
    with pytest.raises(ConfigError, match="LR_SCHEDULER must be one of step, cosine, poly, got 'linear'"):
        learning_rate(1, solver)


def test_timm_style_warmup_and_cosine_by_hand():
    """SCHEDULE_STYLE timm, written out: epoch e has t = e - 1; warm-up WARMUP_LR + t (LR - WARMUP_LR) / W
    for t < W, then MIN_LR + (LR - MIN_LR) (1 + cos(pi t / EPOCHS)) / 2, the warm-up inside the cosine."""
    solver = build_cfg(None, ["SOLVER.SCHEDULE_STYLE=timm", "SOLVER.LR_SCHEDULER=cosine", "SOLVER.WARMUP_EPOCHS=4",
                              "SOLVER.WARMUP_LR=0.001", "SOLVER.EPOCHS=20", "SOLVER.LR=0.5",
                              "SOLVER.MIN_LR=0.01"]).SOLVER
    assert learning_rate(1, solver) == pytest.approx(0.001)
    assert learning_rate(3, solver) == pytest.approx(0.001 + 2 * (0.5 - 0.001) / 4)
    for epoch in (5, 11, 20):
        t = epoch - 1
        assert learning_rate(epoch, solver) == pytest.approx(0.01 + 0.49 * 0.5 * (1 + math.cos(math.pi * t / 20)))


@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_timm_style_equals_timms_scheduler(sched):
    """The LR of every epoch against timm's own CosineLRScheduler / StepLRScheduler, built as
    create_scheduler builds them for DeiT's / OFA-KD's train scripts (warmup_prefix False) and stepped
    once per epoch."""
    import torch
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    epochs, warmup, lr, warmup_lr, min_lr = 30, 5, 5e-4, 5e-7, 1e-5
    solver = build_cfg(None, ["SOLVER.SCHEDULE_STYLE=timm", f"SOLVER.LR_SCHEDULER={sched}", f"SOLVER.EPOCHS={epochs}",
                              f"SOLVER.WARMUP_EPOCHS={warmup}", f"SOLVER.LR={lr}", f"SOLVER.WARMUP_LR={warmup_lr}",
                              f"SOLVER.MIN_LR={min_lr}", "SOLVER.LR_DECAY_STAGES=[10, 20]",
                              "SOLVER.LR_DECAY_RATE=0.1"]).SOLVER
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    if sched == "cosine":
        timm_schedule = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=min_lr, warmup_t=warmup,
                                          warmup_lr_init=warmup_lr, warmup_prefix=False)
    else:
        timm_schedule = StepLRScheduler(optimizer, decay_t=10, decay_rate=0.1, warmup_t=warmup,
                                        warmup_lr_init=warmup_lr, warmup_prefix=False)
    for epoch in range(1, epochs + 1):
        timm_schedule.step(epoch - 1)
        assert learning_rate(epoch, solver) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), epoch


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
