"""One training step of a distiller on small CIFAR models, with the checks every method must pass."""

from typing import Dict, Sequence, Tuple

import torch

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.models import cifar_model_dict


def build(method: str, opts: Sequence[str] = (), student: str = "resnet8", teacher: str = "wrn_16_2",
          num_classes: int = 10, num_data: int = 64, size: int = 16):
    """(distiller, cfg) for `method` at `size` pixels, models seeded."""
    cfg = build_cfg(None, [f"DISTILLER.TYPE={method}", f"DISTILLER.STUDENT={student}",
                           f"DISTILLER.TEACHER={teacher}", f"DATASET.IMAGE_SIZE={size}", *opts])
    torch.manual_seed(0)
    s = cifar_model_dict[student][0](num_classes=num_classes)
    t = cifar_model_dict[teacher][0](num_classes=num_classes)
    return distiller_dict[method](s, t, cfg, num_data=num_data, num_classes=num_classes), cfg


def train_step(distiller, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Forward in train mode and backward of the summed losses; checks the gradient contract:
    finite losses, a gradient on every student and distiller parameter, none on the teacher, and
    the teacher's weights and BatchNorm statistics unchanged."""
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    distiller.train()
    assert not distiller.teacher.training
    logits, losses = distiller(**batch)
    assert set(losses) >= {"loss_ce", "loss_kd"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    for name, p in distiller.student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"student.{name}"
    for module in distiller.distiller_modules():
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in distiller.teacher.parameters())
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    expected = list(distiller.student.parameters()) + [p for m in distiller.distiller_modules() for p in m.parameters()]
    assert {id(p) for p in distiller.get_learnable_parameters()} == {id(p) for p in expected}
    return logits, losses
