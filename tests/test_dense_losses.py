"""The dense baselines' math (mdistiller/losses: cwd, pkd, mgd, fgd) against independent computations."""

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax

from mdistiller.losses.cwd import cwd_loss
from mdistiller.losses.fgd import FGDLoss, fgd_attention, fgd_masks
from mdistiller.losses.mgd import MaskedGenerator, mgd_loss, random_keep_mask
from mdistiller.losses.pkd import pkd_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_cwd_against_scipy_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    tau = 2.0
    expected = 0.0
    for n in range(2):
        for c in range(3):
            p_t = softmax(t[n, c].numpy().ravel() / tau)
            p_s = softmax(s[n, c].numpy().ravel() / tau)
            expected += rel_entr(p_t, p_s).sum()
    assert float(cwd_loss(s, t, tau)) == pytest.approx(tau**2 * expected / 6, rel=1e-5)
    assert float(cwd_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_pkd_is_one_minus_pearson_per_channel():
    torch.manual_seed(1)
    s, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    # MSE of standardised maps / 2 = (n-1)/n * (1 - r) per channel, averaged over channels
    values = []
    for c in range(2):
        a, b = s[:, c].numpy().ravel(), t[:, c].numpy().ravel()
        r = np.corrcoef(a, b)[0, 1]
        values.append((a.size - 1) / a.size * (1 - r))
    assert float(pkd_loss(s, t)) == pytest.approx(np.mean(values), rel=1e-4)
    assert float(pkd_loss(3 * t + 1, t)) == pytest.approx(0.0, abs=1e-5)   # invariant to scale and shift
    small = torch.randn(3, 2, 2, 2)
    assert torch.isfinite(pkd_loss(small, t))                             # resized to the teacher's size


@pytest.mark.slow
def test_mgd_mask_ratio_and_loss():
    torch.manual_seed(2)
    s = torch.randn(4, 3, 20, 20)
    generator = torch.Generator().manual_seed(0)
    mask = random_keep_mask(s, 0.65, generator)
    assert mask.shape == (4, 1, 20, 20) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert float(mask.mean()) == pytest.approx(0.35, abs=0.05)
    gen = MaskedGenerator(3)
    t = torch.randn(4, 3, 20, 20)
    expected = ((gen.generation(s * mask) - t) ** 2).sum() / 4
    torch.testing.assert_close(mgd_loss(gen, s, t, mask), expected)


def test_fgd_masks_hand_worked():
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 8.0]]), torch.zeros(0, 4)]
    fg, bg = fgd_masks(boxes, [(32, 32), (32, 32)], (4, 4))
    # box -> columns 0..2, rows 0..1 on the 4x4 map: 3 x 2 cells of 1/6 (ends included, as the authors)
    expected = torch.zeros(4, 4)
    expected[0:2, 0:3] = 1 / 6
    torch.testing.assert_close(fg[0], expected)
    torch.testing.assert_close(bg[0], (expected == 0).float() / 10)
    assert fg[1].sum() == 0 and float(bg[1].sum()) == pytest.approx(1.0)


def test_fgd_attention_and_loss_terms():
    torch.manual_seed(3)
    t = torch.randn(2, 4, 3, 3)
    spatial, channel = fgd_attention(t, 0.5)
    a = t.abs().numpy()
    expected_s = 9 * softmax(a.mean(1).reshape(2, -1) / 0.5, axis=1).reshape(2, 3, 3)
    expected_c = 4 * softmax(a.mean((2, 3)) / 0.5, axis=1)
    np.testing.assert_allclose(spatial.numpy(), expected_s, rtol=1e-5)
    np.testing.assert_allclose(channel.numpy(), expected_c, rtol=1e-5)
    loss = FGDLoss(4, alpha=1.0, beta=0.0, gamma=0.0, lambda_=0.0)
    s = torch.randn(2, 4, 3, 3)
    fg = torch.rand(2, 3, 3)
    terms = loss(s, t, fg, torch.zeros(2, 3, 3))
    focal = sum((fg[n, y, x] * spatial[n, y, x] * channel[n, c] * (s[n, c, y, x] - t[n, c, y, x]) ** 2)
                for n in range(2) for c in range(4) for y in range(3) for x in range(3)) / 2
    assert float(terms["focal"]) == pytest.approx(float(focal), rel=1e-5)
    # the global blocks start as the identity (last conv zero): relation = sum (s - t)^2 / N
    full = FGDLoss(4, alpha=0.0, beta=0.0, gamma=0.0, lambda_=1.0)(s, t, fg, fg)
    assert float(full["global"].detach()) == pytest.approx(float(((s - t) ** 2).sum() / 2), rel=1e-5)
