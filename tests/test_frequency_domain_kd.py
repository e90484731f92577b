"""CWD and PKD in the frequency domain (FreeKD supplement B, Table 10): the losses on the Haar detail
bands against PyWavelets' DWT and the two formulas written out in numpy; the DOMAIN check."""

import numpy as np
import pytest
import pywt
import torch
from scipy.special import rel_entr, softmax
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError
from mdistiller.frequency import haar_detail_channels
from mdistiller.losses.cwd import frequency_cwd_loss
from mdistiller.losses.pkd import frequency_pkd_loss
from mdistiller_dense.distillers._base import check_domain

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _pywt_details(x: np.ndarray, levels: int):
    """Per level (finest first) an (N, C, 3, h, w) array of PyWavelets' (cH, cV, cD); the project's
    Haar is orthonormal with zero padding (haar.py), i.e. pywt's 'haar' with mode='zero'."""
    n, c = x.shape[:2]
    per_map = [[pywt.wavedec2(x[i, j], "haar", mode="zero", level=levels) for j in range(c)] for i in range(n)]
    return [np.array([[np.stack(per_map[i][j][levels - k]) for j in range(c)] for i in range(n)])
            for k in range(levels)]


def _cwd_numpy(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    """T^2 * sum over (n, channel, orientation) of KL(softmax(t/T) || softmax(s/T)) / (N * 3C)."""
    n, c, o = s.shape[:3]
    total = sum(rel_entr(softmax(t[i, j, k].ravel() / tau), softmax(s[i, j, k].ravel() / tau)).sum()
                for i in range(n) for j in range(c) for k in range(o))
    return tau**2 * total / (n * c * o)


def _pkd_numpy(s: np.ndarray, t: np.ndarray, eps: float = 1e-6) -> float:
    """Mean over (channel, orientation) and positions of ((s - mu_s)/(sd_s+eps) - (t - mu_t)/(sd_t+eps))^2 / 2,
    mean and unbiased sd per (channel, orientation) over batch and space."""
    def standardise(x):
        axes = (0, 3, 4)
        return (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, ddof=1, keepdims=True) + eps)
    return float(((standardise(s) - standardise(t)) ** 2).mean() / 2)


def test_detail_channels_are_pywavelets_bands_with_orientations_as_channels():
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)       # odd height: zero padding as pywt mode='zero'
    ours = haar_detail_channels(x, levels=2)
    expected = _pywt_details(x.numpy(), 2)
    assert [tuple(d.shape) for d in ours] == [(2, 9, 4, 5), (2, 9, 2, 3)]
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got.numpy(), want.reshape(got.shape), atol=1e-12)
    # channel 3c + o is orientation o of channel c
    np.testing.assert_allclose(ours[0][:, 3 * 1 + 2].numpy(), expected[0][:, 1, 2], atol=1e-12)


@pytest.mark.parametrize("levels", [1, 2])
def test_frequency_cwd_against_pywavelets_and_the_kl_formula(levels):
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 12, dtype=torch.float64), torch.randn(2, 3, 8, 12, dtype=torch.float64)
    tau = 2.0
    s_bands, t_bands = _pywt_details(s.numpy(), levels), _pywt_details(t.numpy(), levels)
    expected = sum(_cwd_numpy(a, b, tau) for a, b in zip(s_bands, t_bands))
    assert float(frequency_cwd_loss(s, t, tau, levels)) == pytest.approx(expected, rel=1e-5)
    # the approximation band is not distilled: adding a constant changes only cA
    assert float(frequency_cwd_loss(s + 3.0, t, tau, levels)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("levels", [1, 2])
def test_frequency_pkd_against_pywavelets_and_the_pearson_formula(levels):
    torch.manual_seed(1)
    s, t = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    s_bands, t_bands = _pywt_details(s.numpy(), levels), _pywt_details(t.numpy(), levels)
    expected = sum(_pkd_numpy(a, b) for a, b in zip(s_bands, t_bands))
    assert float(frequency_pkd_loss(s, t, levels)) == pytest.approx(expected, rel=1e-4)
    assert float(frequency_pkd_loss(2 * t + 1, t, levels)) == pytest.approx(0.0, abs=1e-6)


def test_frequency_pkd_resizes_the_student_before_the_transform():
    torch.manual_seed(2)
    s, t = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 8, 8)
    up = torch.nn.functional.interpolate(s, size=(8, 8), mode="bilinear", align_corners=False)
    assert float(frequency_pkd_loss(s, t)) == pytest.approx(float(frequency_pkd_loss(up, t)), rel=1e-6)


def test_frequency_losses_reach_the_student():
    s = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randn(2, 4, 8, 8)
    (frequency_cwd_loss(s, t) + frequency_pkd_loss(s, t)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_domain_is_checked_in_one_line():
    section = CN({"DOMAIN": "spatial", "DWT_LEVELS": 1})
    assert check_domain(section, "CWD") is False
    section.DOMAIN = "frequency"
    assert check_domain(section, "CWD") is True
    section.DOMAIN = "wavelet"
    with pytest.raises(ConfigError, match=r"^CWD.DOMAIN 'wavelet' is not one of spatial, frequency.$"):
        check_domain(section, "CWD")
    section.DOMAIN, section.DWT_LEVELS = "frequency", 0
    with pytest.raises(ConfigError, match="PKD.DWT_LEVELS"):
        check_domain(section, "PKD")
