"""The Gaussian high-pass mask and the SFA module against numpy, by hand and under bf16 autocast."""

import math

import numpy as np
import pytest
import torch

from mdistiller.frequency import SmoothedFrequencyAugmentation, gaussian_highpass_mask
from mdistiller.frequency.fft_filter import circulant_basis


def reference_mask(h: int, w: int, cutoff: float) -> np.ndarray:
    """Element by element: 1 - exp(-r^2 / 2 sigma^2) around (h // 2, w // 2), divided by the max."""
    sigma = cutoff * min(h, w)
    mask = np.zeros((h, w))
    for u in range(h):
        for v in range(w):
            r2 = (u - h // 2) ** 2 + (v - w // 2) ** 2
            mask[u, v] = 1.0 - math.exp(-r2 / (2.0 * sigma**2))
    return mask / mask.max() if mask.max() > 0 else mask


@pytest.mark.parametrize("h, w, cutoff", [(8, 8, 0.1), (4, 4, 0.1), (2, 2, 0.1), (7, 7, 0.1), (3, 5, 0.3), (6, 5, 0.2)])
def test_mask_matches_formula_and_removes_dc(h, w, cutoff):
    mask = gaussian_highpass_mask(h, w, cutoff)
    assert mask.dtype == torch.float32 and mask.shape == (h, w)
    np.testing.assert_allclose(mask.numpy(), reference_mask(h, w, cutoff), rtol=1e-6, atol=1e-7)
    assert mask[h // 2, w // 2] == 0  # the zero frequency after fftshift
    assert mask.max() == pytest.approx(1.0) and mask.min() == 0
    dc = np.fft.fftshift(np.arange(h * w).reshape(h, w) == 0)  # where fftshift moves index (0, 0)
    assert mask.numpy()[dc] == 0


def test_mask_hand_worked_3x3():
    # sigma = 0.5 * 3 = 1.5, 2 sigma^2 = 4.5; r^2 is 0 (centre), 1 (edges), 2 (corners).
    edge, corner = 1 - math.exp(-1 / 4.5), 1 - math.exp(-2 / 4.5)
    expected = np.array([[corner, edge, corner], [edge, 0.0, edge], [corner, edge, corner]]) / corner
    np.testing.assert_allclose(gaussian_highpass_mask(3, 3, 0.5).numpy(), expected, rtol=1e-6)
    assert gaussian_highpass_mask(1, 1, 0.1).tolist() == [[0.0]]  # only the DC term: all removed


def test_mask_rejects_bad_cutoff():
    with pytest.raises(ValueError, match="cutoff"):
        gaussian_highpass_mask(4, 4, 0.0)


def reference_frequency_branch(x: np.ndarray, real: np.ndarray, imag: np.ndarray, cutoff: float) -> np.ndarray:
    """Re ifft2(ifftshift(mask * fftshift(fft2(x) * K))), ortho norm, in float64 numpy."""
    h, w = x.shape[-2:]
    spectrum = np.fft.fft2(x, norm="ortho") * (real + 1j * imag)
    spectrum = np.fft.fftshift(spectrum, axes=(-2, -1)) * reference_mask(h, w, cutoff)
    return np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="ortho").real


# Maps of at most 64 positions take the circulant product, larger ones the FFTs: both against numpy.
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (4, 4), (2, 2), (5, 3), (9, 9), (12, 7)])
def test_sfa_matches_numpy(size):
    torch.manual_seed(0)
    channels = 6
    sfa = SmoothedFrequencyAugmentation(channels, size, cutoff=0.1).double()
    assert sfa.use_circulant == (size[0] * size[1] <= 64)
    with torch.no_grad():  # a filter far from its tiny initial values, so the branch is not ~0
        sfa.real_weight.normal_()
        sfa.imag_weight.normal_()
        sfa.rate1.fill_(0.7)
        sfa.rate2.fill_(-0.2)
    x = torch.randn(3, channels, *size, dtype=torch.float64)
    expected_freq = reference_frequency_branch(x.numpy(), sfa.real_weight.detach().numpy(),
                                               sfa.imag_weight.detach().numpy(), 0.1)
    w0 = sfa.w0.weight.detach().numpy()[:, :, 0, 0]
    expected_spatial = np.einsum("oc,bchw->bohw", w0, x.numpy()) + sfa.w0.bias.detach().numpy()[None, :, None, None]
    with torch.no_grad():
        freq = sfa.frequency_branch(x)
        out = sfa(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(freq.numpy(), expected_freq, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), 0.7 * expected_freq - 0.2 * expected_spatial, rtol=1e-6, atol=1e-6)
    # DC removed: every channel of the frequency branch has zero spatial mean.
    np.testing.assert_allclose(freq.mean(dim=(2, 3)).numpy(), 0.0, atol=1e-9)


def test_sfa_initialisation():
    torch.manual_seed(0)
    sfa = SmoothedFrequencyAugmentation(16, (4, 4))
    for weight in (sfa.real_weight, sfa.imag_weight):
        assert weight.shape == (16, 4, 4)
        assert 0 <= weight.min() and weight.max() <= 1 / 16**2
        assert weight.std() > 0
    assert sfa.rate1.item() == 0.5 and sfa.rate2.item() == 0.5
    assert "spectral_mask" not in sfa.state_dict()  # derived from the size, not saved
    assert set(sfa.state_dict()) == {"rate1", "rate2", "real_weight", "imag_weight", "w0.weight", "w0.bias"}


def test_circulant_basis_gives_a_circular_convolution():
    """M[q, p] = g[(p - q) mod (h, w)]: x M equals the circular convolution sum_q g[p - q] x[q], by hand."""
    h, w = 3, 4
    g, x = torch.randn(h, w, dtype=torch.float64), torch.randn(h, w, dtype=torch.float64)
    expected = torch.zeros(h, w, dtype=torch.float64)
    for pr in range(h):
        for pc in range(w):
            expected[pr, pc] = sum(g[(pr - qr) % h, (pc - qc) % w] * x[qr, qc] for qr in range(h) for qc in range(w))
    product = x.flatten() @ (g.flatten() @ circulant_basis(h, w).double()).view(h * w, h * w)
    torch.testing.assert_close(product.reshape(h, w), expected)


@pytest.mark.parametrize("size", [(4, 4), (9, 9)])
def test_sfa_under_bf16_autocast(size):
    """Small maps: the circulant product runs in bf16 (close to the float32 result at bf16 precision);
    large maps: the FFTs run in float32 and only the result is rounded to bf16."""
    torch.manual_seed(0)
    sfa = SmoothedFrequencyAugmentation(8, size)
    x = torch.randn(2, 8, *size).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sfa(x)
        freq = sfa.frequency_branch(x)
    assert out.dtype == torch.bfloat16 and freq.dtype == torch.bfloat16
    with torch.no_grad():
        exact = sfa.frequency_branch(x.float())  # the float32 computation on the same inputs
    if sfa.use_circulant:
        assert (freq.float() - exact).abs().max() <= 2e-2 * exact.abs().max()
    else:
        torch.testing.assert_close(freq.float(), exact.to(torch.bfloat16).float())
    (out.float() * torch.randn(out.shape)).sum().backward()  # not a plain sum: the branch has no DC
    for weight in (sfa.real_weight, sfa.imag_weight):
        assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(4, 3), (9, 9)])
def test_sfa_gradients_by_finite_differences(size):
    """Gradients reach x and both parts of the filter, on the circulant (4x3) and the FFT (9x9) path."""
    torch.manual_seed(0)
    sfa = SmoothedFrequencyAugmentation(2, size).double()
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)

    def branch(x, real, imag):
        return torch.func.functional_call(sfa, {"real_weight": real, "imag_weight": imag}, (x,), strict=False)

    real = sfa.real_weight.detach().clone().normal_().requires_grad_()
    imag = sfa.imag_weight.detach().clone().normal_().requires_grad_()
    assert torch.autograd.gradcheck(branch, (x, real, imag), fast_mode=True)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_sfa_output_keeps_the_input_layout(layout):
    sfa = SmoothedFrequencyAugmentation(4, (4, 4))
    x = torch.randn(2, 4, 4, 4).contiguous(memory_format=layout)
    reference = sfa.frequency_branch(x.contiguous())
    out = sfa.frequency_branch(x)
    assert out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out, reference)
