"""DIST: the loss against the paper's Eq. 3-6 written out in numpy (np.corrcoef for Pearson's rho),
its invariances, and the distiller's losses and gradients."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from mdistiller.losses.dist import dist_loss
from tests.distiller_step import build, train_step


def reference_dist(s: np.ndarray, t: np.ndarray, beta: float, gamma: float, tau: float) -> float:
    y_s, y_t = softmax(s / tau, axis=1), softmax(t / tau, axis=1)
    inter = np.mean([1 - np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(len(s))])
    intra = np.mean([1 - np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(s.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 1.0), (0.0, 1.5, 2.0)])
def test_dist_loss_matches_formula(beta, gamma, tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 12, generator=g, dtype=torch.float64) * 2, torch.randn(8, 12, generator=g, dtype=torch.float64) * 2
    got = dist_loss(s, t, beta, gamma, tau).item()
    assert got == pytest.approx(reference_dist(s.numpy(), t.numpy(), beta, gamma, tau), rel=1e-6)


def test_inter_class_term_is_zero_for_an_affine_copy_of_the_teacher_distribution():
    # rho is invariant to y -> a * y + b, so a student matching the teacher's probabilities up to
    # scale and shift per sample has no inter-class loss; identical predictions have none at all
    g = torch.Generator().manual_seed(1)
    t = torch.randn(5, 7, generator=g, dtype=torch.float64)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)  # up to the 1e-8 in rho's denominator
    assert dist_loss(t / 3.0, t, beta=1.0, gamma=0.0).item() > 1e-3  # softmax is not affine in the logits
    y_t = torch.softmax(t, dim=1)
    affine = torch.log(0.5 * y_t + 0.1)  # softmax(log(0.5 y + 0.1)) = (0.5 y + 0.1) / (0.5 + 0.7): affine in y
    assert dist_loss(affine, t, beta=1.0, gamma=0.0).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_distiller_step():
    distiller, _ = build("DIST", ["DIST.LOSS.KD_WEIGHT=2.0"])
    image, target = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    logits, losses = train_step(distiller, {"image": image, "target": target})
    with torch.no_grad():
        t_logits = distiller.teacher(image)[0]
    expected = 2.0 * reference_dist(logits.detach().double().numpy(), t_logits.double().numpy(), 1.0, 1.0, 1.0)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    assert distiller.get_extra_parameters() == 0


def test_dist_with_soft_targets_takes_the_soft_target_cross_entropy():
    """A (N, K) target (mixup / cutmix / smoothing): loss_ce = CE_WEIGHT * mean_i -sum_k y_ik log
    softmax(z_s)_ik; loss_kd needs no label and keeps its value (the default KD_WEIGHT 2, tau 4)."""
    distiller, _ = build("DIST", ["DIST.LOSS.CE_WEIGHT=0.7", "DIST.TEMPERATURE=4.0"])
    g = torch.Generator().manual_seed(3)
    image, soft = torch.randn(4, 3, 16, 16, generator=g), torch.softmax(torch.randn(4, 10, generator=g) * 2, dim=1)
    logits, losses = train_step(distiller, {"image": image, "target": soft})
    with torch.no_grad():
        t_logits = distiller.teacher(image)[0].double().numpy()
    s, y = logits.detach().double().numpy(), soft.double().numpy()
    assert losses["loss_ce"].item() == pytest.approx(0.7 * float(-(y * log_softmax(s, axis=1)).sum(1).mean()), rel=1e-5)
    # float32 against float64: 1 - rho of two close distributions at tau 4 keeps about four digits
    assert losses["loss_kd"].item() == pytest.approx(2.0 * reference_dist(s, t_logits, 1.0, 1.0, 4.0), rel=1e-3)
