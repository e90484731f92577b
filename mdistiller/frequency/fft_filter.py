"""Fourier-domain feature filtering: the SFA module of SFAKD and the frequency attention module of
FAM-KD, with their high-pass masks.

SFAKD ("Smooth the Signal, Distill the Essence: A Frequency-Aware Modulation Framework for
Knowledge Distillation", You et al., 2025) augments the student's last feature map ``x`` with

    freq(x) = Re ifft2( ifftshift( m * fftshift( fft2(x) * K ) ) )        (fft2 / ifft2 "ortho")
    SFA(x)  = r1 * freq(x) + r2 * conv1x1(x)

where ``K`` is a learnable complex filter per channel and ``m`` the Gaussian high-pass mask below.
FAM-KD ("Frequency Attention for Knowledge Distillation", Pham et al., WACV 2024) mixes channels in
the Fourier domain instead, behind a hard high-pass that zeroes the centre square of the shifted
spectrum:

    global(x)[o] = Re ifft2( ifftshift( m * fftshift( sum_i fft2(x)[i] * K[i, o] ) ) )
    FAM(x)       = r1 * global(x) + r2 * conv1x1(x)
"""

from typing import Callable, Tuple

import torch
from torch import Tensor, nn

from mdistiller.frequency._layout import memory_format_of

__all__ = ["FrequencyAttention", "SmoothedFrequencyAugmentation", "centre_square_highpass_mask", "circulant_basis",
           "gaussian_highpass_mask", "spectral_filter"]


def gaussian_highpass_mask(h: int, w: int, cutoff: float) -> Tensor:
    """``m(u, v) = 1 - exp(-r^2 / (2 sigma^2))`` over an fftshift-ed ``h x w`` spectrum, float32.

    ``r`` is the distance of (u, v) to the centre ``(h // 2, w // 2)`` (where fftshift puts the
    zero frequency, for odd and even sizes alike) and ``sigma = cutoff * min(h, w)``. The mask is
    divided by its maximum, so it lies in [0, 1]; the DC term is 0 and low frequencies are softly
    suppressed. A 1 x 1 spectrum holds only the DC term: its mask is 0.
    """
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {h} x {w}")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    rows = torch.arange(h, dtype=torch.float64) - h // 2
    cols = torch.arange(w, dtype=torch.float64) - w // 2
    r2 = rows[:, None] ** 2 + cols[None, :] ** 2
    sigma = cutoff * min(h, w)
    mask = 1.0 - torch.exp(-r2 / (2.0 * sigma**2))
    peak = mask.max()
    if peak > 0:
        mask = mask / peak
    return mask.float()


def centre_square_highpass_mask(h: int, w: int, cuton: float) -> Tensor:
    """FAM-KD's mask over an fftshift-ed ``h x w`` spectrum, float32: 1 except the centre rectangle
    ``[cy - rh, cy + rh) x [cx - rw, cx + rw)`` set to 0, with ``cy = int(h / 2)``, ``rh = int(cuton * cy)``
    (likewise for the width). Small maps have ``rh = 0``: all ones (a no-op below 20 x 20 at cuton 0.1).
    """
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {h} x {w}")
    cy, cx = int(h / 2), int(w / 2)
    rh, rw = int(cuton * cy), int(cuton * cx)
    mask = torch.ones(h, w)
    mask[cy - rh:cy + rh, cx - rw:cx + rw] = 0.0
    return mask


def spectral_filter(x: Tensor, modulate: Callable[[Tensor, torch.dtype], Tensor]) -> Tensor:
    """``Re ifft2(modulate(fft2(x)))`` ("ortho") in float32 (float64 for float64 input) whatever the
    autocast state (``torch.fft`` has no bfloat16 kernels on the CPU), returned in ``x.dtype``.
    `modulate(spectrum, real_dtype)` gets the complex spectrum and the real dtype it is computed in."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        spectrum = modulate(torch.fft.fft2(x.to(dtype), norm="ortho"), dtype)
        out = torch.fft.ifft2(spectrum, norm="ortho").real
    return out.to(x.dtype)


def circulant_basis(h: int, w: int) -> Tensor:
    """The 0/1 matrix (h*w, (h*w)^2) taking a flattened ``h x w`` kernel g to the matrix
    ``M = (g @ basis).view(h*w, h*w)``, ``M[q, p] = g[(p - q) mod (h, w)]``, so that the row vector
    ``x.flatten() @ M`` is the 2-D circular convolution of x with g. A matrix product (not a gather) so
    that its backward is one too; M comes out in the layout the batched product wants (no transpose)."""
    rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    index = ((rows[None, :] - rows[:, None]) % h) * w + (cols[None, :] - cols[:, None]) % w
    return torch.nn.functional.one_hot(index.flatten(), h * w).T.float()


class SmoothedFrequencyAugmentation(nn.Module):
    """SFA: a learnable per-channel Fourier filter behind a Gaussian high-pass, plus a 1x1 conv.

    Input and output are ``(B, channels, h, w)`` with ``(h, w) = size``. Parameters keep the SFAKD
    authors' names (``real_weight``, ``imag_weight``, ``w0``, ``rate1``, ``rate2``), so their
    checkpoints load: the filter's real and imaginary parts start uniform in ``[0, 1 / channels^2]``,
    the mixing weights ``rate1`` (frequency) and ``rate2`` (spatial) at 0.5.

    The frequency branch is linear in x, so by the convolution theorem it is the circular convolution
    of each channel with the real kernel ``g = Re ifft2(K * m)`` (the ortho norms cancel). For maps of
    at most :attr:`MAX_CIRCULANT_POSITIONS` positions (every SFAKD pair: 8x8, 7x7, 4x4, 2x2) it is
    computed that way, as one batched product with the circulant matrices of g, which runs under
    autocast in bf16 like the convolutions and is 2.2x faster than the FFTs here. Larger maps take the
    FFTs, in at least float32 (``torch.fft`` has no bfloat16 kernels on the CPU). Both equal the
    formula of the module docstring (tests: against numpy's FFT).
    """

    MAX_CIRCULANT_POSITIONS = 64

    def __init__(self, channels: int, size: Tuple[int, int], cutoff: float = 0.1) -> None:
        super().__init__()
        h, w = size
        scale = 1.0 / channels**2
        self.rate1 = nn.Parameter(torch.tensor(0.5))
        self.rate2 = nn.Parameter(torch.tensor(0.5))
        self.real_weight = nn.Parameter(scale * torch.rand(channels, h, w))
        self.imag_weight = nn.Parameter(scale * torch.rand(channels, h, w))
        self.w0 = nn.Conv2d(channels, channels, kernel_size=1)
        # fftshift -> mask -> ifftshift equals one product with the mask moved back to FFT order.
        mask = gaussian_highpass_mask(h, w, cutoff)
        self.register_buffer("spectral_mask", torch.fft.ifftshift(mask, dim=(-2, -1)), persistent=False)
        self.use_circulant = h * w <= self.MAX_CIRCULANT_POSITIONS
        if self.use_circulant:
            self.register_buffer("circulant_basis", circulant_basis(h, w), persistent=False)

    def spectral_kernel(self, dtype: torch.dtype) -> Tensor:
        """``K * m`` (channels, h, w), complex, from the real dtype `dtype`."""
        return torch.complex(self.real_weight.to(dtype), self.imag_weight.to(dtype)) * self.spectral_mask.to(dtype)

    def frequency_branch(self, x: Tensor) -> Tensor:
        """``Re ifft2(ifftshift(m * fftshift(fft2(x) * K)))``: a circulant product on small maps,
        else :func:`spectral_filter`."""
        if not self.use_circulant:
            return spectral_filter(x, lambda spectrum, dtype: spectrum * self.spectral_kernel(dtype))
        dtype = torch.promote_types(self.real_weight.dtype, torch.float32)
        positions = x.shape[-2] * x.shape[-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            kernel = torch.fft.ifft2(self.spectral_kernel(dtype)).real.flatten(1)
            operators = (kernel @ self.circulant_basis.to(dtype)).view(-1, positions, positions)  # M_c[q, p] = g_c[p - q]
        rows = x.flatten(2).transpose(0, 1)  # (C, B, hw)
        out = torch.bmm(rows, operators.to(rows.dtype))
        return out.transpose(0, 1).unflatten(-1, x.shape[-2:]).contiguous(memory_format=memory_format_of(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.rate1 * self.frequency_branch(x) + self.rate2 * self.w0(x)


class FrequencyAttention(nn.Module):
    """FAM-KD's frequency attention module: a learnable complex channel mixing per frequency behind
    the centre-square high-pass, plus a 1x1 conv, mixed by learnable scalars.

    Input ``(B, in_channels, h, w)``, output ``(B, out_channels, h, w)`` with ``(h, w) = size``. The
    complex weights ``K`` (in_channels, out_channels, h, w) are held as ``real_weight`` and
    ``imag_weight`` (both uniform in ``[0, 1 / (in_channels * out_channels)]`` at init, the authors'
    ``scale * rand(cfloat)``); ``rate1`` (global) and ``rate2`` (local) start at 0.5, ``w0`` is the
    1x1 conv with bias.
    """

    def __init__(self, in_channels: int, out_channels: int, size: Tuple[int, int], cuton: float = 0.1) -> None:
        super().__init__()
        h, w = size
        scale = 1.0 / (in_channels * out_channels)
        self.rate1 = nn.Parameter(torch.tensor(0.5))
        self.rate2 = nn.Parameter(torch.tensor(0.5))
        self.real_weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, h, w))
        self.imag_weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, h, w))
        self.w0 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        mask = centre_square_highpass_mask(h, w, cuton)
        self.register_buffer("spectral_mask", torch.fft.ifftshift(mask, dim=(-2, -1)), persistent=False)

    def global_branch(self, x: Tensor) -> Tensor:
        """``Re ifft2(m' * sum_i fft2(x)[:, i] * K[i])``, m' the mask moved back to FFT order."""

        def modulate(spectrum: Tensor, dtype: torch.dtype) -> Tensor:
            kernel = torch.complex(self.real_weight.to(dtype), self.imag_weight.to(dtype))
            # sum_i X[b, i] K[i, o] at every frequency, as one batched product (h, w, B, C_in) @ (h, w, C_in, C_out)
            # of contiguous operands: torch.einsum takes a path 10-25x slower for these complex operands.
            mixed = spectrum.permute(2, 3, 0, 1).contiguous() @ kernel.permute(2, 3, 0, 1).contiguous()
            return mixed.permute(2, 3, 0, 1) * self.spectral_mask.to(dtype)

        return spectral_filter(x, modulate)

    def forward(self, x: Tensor) -> Tensor:
        return self.rate1 * self.global_branch(x) + self.rate2 * self.w0(x)
