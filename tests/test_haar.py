"""The torch Haar DWT / IDWT against PyWavelets, exact reconstruction, gradients and dtypes."""

import warnings

import numpy as np
import pytest
import pywt
import torch

from mdistiller.frequency.haar import haar_dwt2, haar_idwt2, haar_wavedec2, haar_waverec2

SIZES = [(8, 8), (6, 6), (7, 7), (5, 9), (12, 7), (4, 4), (1, 3)]


def pywt_wavedec2(x: np.ndarray, level: int):
    with warnings.catch_warnings():  # levels past the useful depth only warn in PyWavelets
        warnings.simplefilter("ignore", UserWarning)
        return pywt.wavedec2(x, "haar", mode="zero", level=level)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_wavedec2_equals_pywavelets(size, level):
    x = np.random.default_rng(sum(size) * 10 + level).normal(size=(2, 3, *size))
    expected = pywt_wavedec2(x, level)
    got = haar_wavedec2(torch.from_numpy(x), level)
    assert len(got) == len(expected) == level + 1
    np.testing.assert_allclose(got[0].numpy(), expected[0], rtol=0, atol=1e-12)
    for got_level, expected_level in zip(got[1:], expected[1:]):
        assert len(got_level) == 3
        for g, e in zip(got_level, expected_level):
            assert g.shape == e.shape
            np.testing.assert_allclose(g.numpy(), e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_waverec2_equals_pywavelets_and_reconstructs(size, level):
    x = np.random.default_rng(7 + level).normal(size=(2, 2, *size))
    expected = pywt.waverec2(pywt_wavedec2(x, level), "haar", mode="zero")
    coeffs = haar_wavedec2(torch.from_numpy(x), level)
    rebuilt = haar_waverec2(coeffs)
    assert rebuilt.shape == expected.shape  # PyWavelets keeps the padded (even) size
    np.testing.assert_allclose(rebuilt.numpy(), expected, rtol=0, atol=1e-12)
    cropped = haar_waverec2(coeffs, size)
    assert cropped.shape == x.shape
    np.testing.assert_allclose(cropped.numpy(), x, rtol=0, atol=1e-12)
    # float32: x == IDWT(DWT(x)) to float tolerance
    x32 = torch.from_numpy(x).float()
    torch.testing.assert_close(haar_waverec2(haar_wavedec2(x32, level), size), x32, rtol=0, atol=1e-5)


def test_one_level_on_a_hand_worked_block():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    approx, (ch, cv, cd) = haar_dwt2(x)
    assert [approx.item(), ch.item(), cv.item(), cd.item()] == [3.0, -2.0, -1.0, 0.0]
    torch.testing.assert_close(haar_idwt2(approx, (ch, cv, cd)), x)


def test_gradcheck_through_dwt_and_idwt():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def roundtrip(t):
        coeffs = haar_wavedec2(t, 2)
        weighted = [coeffs[0] * 2.0] + [tuple(band * (j + 1.0) for band in level) for j, level in enumerate(coeffs[1:])]
        return haar_waverec2(weighted, (5, 6))

    assert torch.autograd.gradcheck(roundtrip, (x,))
    assert torch.autograd.gradcheck(lambda t: haar_wavedec2(t, 3)[0], (x,))
    assert torch.autograd.gradgradcheck(roundtrip, (x,))  # the backward (the inverse transform) is differentiable too


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_dtypes_follow_input_with_half_precision_computed_in_float32(dtype, expected):
    x = torch.randn(1, 2, 6, 6).to(dtype)
    coeffs = haar_wavedec2(x, 2)
    assert coeffs[0].dtype == expected and coeffs[1][0].dtype == expected
    assert haar_waverec2(coeffs).dtype == expected
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert haar_wavedec2(torch.randn(1, 2, 6, 6), 2)[0].dtype == torch.float32


def test_level_must_be_positive():
    with pytest.raises(ValueError):
        haar_wavedec2(torch.zeros(1, 1, 4, 4), 0)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_gradient_keeps_the_input_layout(layout):
    """Channels-last maps get channels-last gradients (the network's kernels slow down on mixed layouts)."""
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=layout).requires_grad_()
    coeffs = haar_wavedec2(x, 2)
    (coeffs[0].square().sum() + sum(band.sum() for band in coeffs[1])).backward()
    assert x.grad.is_contiguous(memory_format=layout)
