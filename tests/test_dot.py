"""DOT: the two momenta on a hand-worked case, the trainer's loss split, checkpoints."""

import io
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_distiller
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.engine.dot import DistillationOrientedTrainer, DOTTrainer
from mdistiller.engine.trainer import trainer_dict
from mdistiller.errors import ConfigError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR, MOMENTUM, DELTA, WD = 0.1, 0.9, 0.075, 0.01


def scalar_problem():
    """a gets task and distillation gradients, c only task, b only distillation.

    task = 2a + 5c, distill = 3a + 4b: constant gradients, so every step is computed by hand.
    """
    a, b, c = (torch.nn.Parameter(torch.tensor(1.0)) for _ in range(3))
    optimizer = DistillationOrientedTrainer([a, b, c], lr=LR, momentum=MOMENTUM - DELTA,
                                            momentum_kd=MOMENTUM + DELTA, weight_decay=WD)
    trainer = SimpleNamespace(optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                              cfg=SimpleNamespace(DISTILLER=SimpleNamespace(TYPE="test")), update_ema=lambda: None)

    def step():
        losses = {"loss_ce": 2 * a + 5 * c, "loss_kd": 1 * a + 4 * b, "loss_extra": 2 * a}
        DOTTrainer.backward_and_step(trainer, losses)

    return (a, b, c), optimizer, step


def test_dot_two_momenta_by_hand():
    (a, b, c), optimizer, step = scalar_problem()
    # step 1: a: task buffer 2 + 0.01*1 = 2.01 -> a = 1 - 0.201 = 0.799; distill buffer 3 (no decay)
    #         -> a = 0.799 - 0.3 = 0.499.  c: buffer 5.01 -> c = 0.499.  b: buffer 4 (first
    #         distillation buffer takes no decay, as MDistiller) -> b = 0.6
    step()
    assert (a.item(), b.item(), c.item()) == pytest.approx((0.499, 0.6, 0.499), abs=1e-6)
    # step 2: a: task grad 2 + 0.01*0.499 = 2.00499, buffer 0.825*2.01 + 2.00499 = 3.66324
    #         -> a = 0.499 - 0.366324 = 0.132676; distill buffer 0.975*3 + 3 = 5.925 -> a = -0.459824
    #         c (task only, mean momentum 0.9): grad 5.00499, buffer 0.9*5.01 + 5.00499 = 9.51399
    #         -> c = 0.499 - 0.951399 = -0.452399
    #         b (distillation only, mean momentum, decayed): grad 4 + 0.01*0.6 = 4.006,
    #         buffer 0.9*4 + 4.006 = 7.606 -> b = 0.6 - 0.7606 = -0.1606
    step()
    assert (a.item(), b.item(), c.item()) == pytest.approx((-0.459824, -0.1606, -0.452399), abs=1e-6)
    assert optimizer.state[a]["momentum_buffer"].item() == pytest.approx(3.66324, abs=1e-6)
    assert optimizer.state[a]["momentum_kd_buffer"].item() == pytest.approx(5.925, abs=1e-6)
    assert set(optimizer.state[b]) == {"momentum_kd_buffer"} and set(optimizer.state[c]) == {"momentum_buffer"}


def test_dot_optimizer_state_round_trips():
    params, optimizer, step = scalar_problem()
    step()
    step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    copies, fresh, step_copy = scalar_problem()
    for p, q in zip(copies, params):
        p.data.copy_(q.data)
    fresh.load_state_dict(state)
    step()
    step_copy()
    assert [p.item() for p in params] == pytest.approx([p.item() for p in copies], abs=1e-7)


def test_dot_needs_a_task_loss_and_sgd(tmp_path):
    (a, b, c), optimizer, _ = scalar_problem()
    trainer = SimpleNamespace(optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                              cfg=SimpleNamespace(DISTILLER=SimpleNamespace(TYPE="X")))
    with pytest.raises(ConfigError, match="needs a 'loss_ce'"):
        DOTTrainer.backward_and_step(trainer, {"loss_kd": a * 2})
    with pytest.raises(ConfigError, match="SOLVER.TYPE SGD"):
        make_dot_trainer(tmp_path, "SOLVER.TYPE=AdamW")


def make_dot_trainer(tmp_path, *opts, name="dot"):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "digits", "kd.yaml"),
                    [f"LOG.PREFIX={tmp_path}", "SOLVER.TRAINER=dot", "DATASET.IMAGE_SIZE=8", "SOLVER.EPOCHS=1",
                     "SOLVER.BATCH_SIZE=256", "DISTILLER.TEACHER=resnet8", f"DISTILLER.TEACHER_WEIGHTS={tmp_path / 'teacher.pth'}", *opts])
    if not (tmp_path / "teacher.pth").exists():
        torch.manual_seed(1)
        from mdistiller.models import cifar_model_dict
        torch.save({"model": cifar_model_dict["resnet8"][0](num_classes=10).state_dict()}, tmp_path / "teacher.pth")
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    distiller = build_distiller(cfg, num_data, num_classes)
    return trainer_dict[cfg.SOLVER.TRAINER](name, distiller, train_loader, val_loader, cfg)


@pytest.mark.slow
def test_dot_trainer_trains_and_checkpoints_both_buffers(tmp_path):
    trainer = make_dot_trainer(tmp_path)
    assert isinstance(trainer, DOTTrainer) and trainer_dict["crd_dot"] is DOTTrainer
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["momentum_kd"]) == pytest.approx((0.825, 0.975))
    trainer.train()
    state = load_checkpoint(str(tmp_path / "dot" / "latest"))
    buffers = state["optimizer"]["state"]
    assert buffers and all({"momentum_buffer", "momentum_kd_buffer"} <= set(s) for s in buffers.values())
    resumed = make_dot_trainer(tmp_path, name="dot")
    resumed.load_state(state)
    for p, q in zip(trainer.distiller.get_learnable_parameters(), resumed.distiller.get_learnable_parameters()):
        for key in ("momentum_buffer", "momentum_kd_buffer"):
            assert torch.equal(trainer.optimizer.state[p][key], resumed.optimizer.state[q][key])
