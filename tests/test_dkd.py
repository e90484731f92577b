"""DKD and logit standardisation: the losses against numpy formulas, two-class stability, the ramp."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax

from distiller_step import build, train_step
from mdistiller.losses.dkd import dkd_loss
from mdistiller.losses.kd import kd_loss
from mdistiller.losses.logit_standardization import standardize_logits

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def reference_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, T: float) -> float:
    """Eq. 7 of the DKD paper from probabilities in float64: b = [p_y, sum of the other p_j] and
    the renormalised non-target distribution p_j / sum of the other p_j."""
    total = 0.0
    for s_row, t_row, label in zip(s, t, y):
        ps, pt = softmax(s_row / T), softmax(t_row / T)
        others = np.arange(len(s_row)) != label
        bs, bt = np.array([ps[label], ps[others].sum()]), np.array([pt[label], pt[others].sum()])
        tckd = np.sum(bt * np.log(bt / bs))
        qs, qt = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        nckd = np.sum(qt * np.log(qt / qs))
        total += alpha * tckd + beta * nckd
    return total / len(y) * T * T


def reference_standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


@pytest.mark.parametrize("num_classes, alpha, beta, T", [(100, 1.0, 8.0, 4.0), (10, 0.5, 2.0, 1.0), (2, 1.0, 8.0, 4.0)])
def test_dkd_loss_matches_formula(num_classes, alpha, beta, T):
    g = torch.Generator().manual_seed(num_classes)
    s, t = torch.randn(6, num_classes, generator=g) * 3, torch.randn(6, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (6,), generator=g)
    got = dkd_loss(s.double(), t.double(), y, alpha, beta, T).item()
    want = reference_dkd(s.double().numpy(), t.double().numpy(), y.numpy(), alpha, beta, T)
    assert got == pytest.approx(want, rel=1e-5)
    assert dkd_loss(s, s, y, alpha, beta, T).item() == pytest.approx(0.0, abs=1e-5)


def test_dkd_two_classes_saturated_softmax_stays_finite():
    """A two-class student so sure of itself that float32 softmax gives exactly 0 for the other
    class: `log(softmax)` is -inf there (what a probability-space TCKD takes the log of), the loss
    and its gradient must stay finite and equal the float64 formula."""
    s = torch.tensor([[60.0, -60.0], [-50.0, 55.0]], requires_grad=True)
    t = torch.tensor([[-5.0, 5.0], [2.0, -1.0]])
    y = torch.tensor([0, 1])
    assert torch.isinf(torch.log(F.softmax(s.detach(), dim=1))).any()
    loss = dkd_loss(s, t, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    want = reference_dkd(s.detach().double().numpy(), t.double().numpy(), y.numpy(), 1.0, 8.0, 1.0)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_standardize_logits_matches_formula_and_invariances():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64) * 4 + 3
    np.testing.assert_allclose(standardize_logits(z).numpy(), reference_standardize(z.numpy()), rtol=1e-12)
    # shift and positive scale of a sample's logits leave the standardised logits unchanged
    assert torch.allclose(standardize_logits(2.5 * z + 7.0), standardize_logits(z), atol=1e-6)


def test_kd_with_logit_standardisation():
    distiller, _ = build("KD", ["KD.LOGIT_STAND=True", "KD.TEMPERATURE=2"])
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = train_step(distiller, dict(image=image, target=target, epoch=1))
    with torch.no_grad():
        t = distiller.teacher(image)[0]
    s_std = torch.from_numpy(reference_standardize(logits.detach().double().numpy()))
    t_std = torch.from_numpy(reference_standardize(t.double().numpy()))
    assert losses["loss_kd"].item() == pytest.approx(0.9 * kd_loss(s_std, t_std, 2.0).item(), rel=1e-4)


@pytest.mark.parametrize("epoch, ramp", [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)])
def test_dkd_distiller_step_and_warmup(epoch, ramp):
    distiller, cfg = build("DKD")
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = train_step(distiller, dict(image=image, target=target, epoch=epoch))
    with torch.no_grad():
        t = distiller.teacher(image)[0]
    want = ramp * reference_dkd(logits.detach().double().numpy(), t.double().numpy(), target.numpy(), 1.0, 8.0, 4.0)
    assert losses["loss_kd"].item() == pytest.approx(want, rel=1e-4)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits.detach(), target).item(), rel=1e-5)
    assert distiller.get_extra_parameters() == 0


def test_dkd_with_logit_standardisation():
    distiller, _ = build("DKD", ["DKD.LOGIT_STAND=True", "DKD.WARMUP=1"])
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = train_step(distiller, dict(image=image, target=target, epoch=3))
    with torch.no_grad():
        t = distiller.teacher(image)[0]
    want = reference_dkd(reference_standardize(logits.detach().double().numpy()),
                         reference_standardize(t.double().numpy()), target.numpy(), 1.0, 8.0, 4.0)
    assert losses["loss_kd"].item() == pytest.approx(want, rel=1e-4)
