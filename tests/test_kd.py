"""KD: the loss against an independent computation, and the distiller's gradient flow."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.losses.kd import kd_loss
from mdistiller.models import cifar_model_dict


def reference_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """T^2 * mean_b sum_c p_t (log p_t - log p_s), in float64 numpy."""
    p_t = softmax(t / T, axis=1)
    return float((p_t * (np.log(p_t) - log_softmax(s / T, axis=1))).sum(1).mean() * T * T)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_formula(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 100, generator=g) * 3, torch.randn(8, 100, generator=g) * 3
    got = kd_loss(s.double(), t.double(), T).item()
    assert got == pytest.approx(reference_kd(s.numpy().astype(np.float64), t.numpy().astype(np.float64), T), rel=1e-10)
    assert kd_loss(s, s, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_distiller_losses_and_gradients():
    cfg = build_cfg(None, ["DISTILLER.TYPE=KD", "KD.TEMPERATURE=2"])
    torch.manual_seed(0)
    student = cifar_model_dict["resnet8"][0](num_classes=10)
    teacher = cifar_model_dict["resnet20"][0](num_classes=10)
    distiller = distiller_dict["KD"](student, teacher, cfg)
    distiller.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = distiller(image=image, target=target, epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"}
    with torch.no_grad():
        t_logits = teacher(image)[0]
    expected_kd = 0.9 * reference_kd(logits.detach().double().numpy(), t_logits.double().numpy(), 2.0)
    assert losses["loss_kd"].item() == pytest.approx(expected_kd, rel=1e-4)
    expected_ce = 0.1 * torch.nn.functional.cross_entropy(logits.detach(), target).item()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.get_extra_parameters() == 0
    assert len(distiller.get_learnable_parameters()) == len(list(student.parameters()))
