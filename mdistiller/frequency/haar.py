"""Multi-level 2-D Haar wavelet transform and its inverse, batched over (..., H, W), in torch.

Equal to PyWavelets' ``pywt.wavedec2(x, "haar", mode="zero", level=L)`` and ``pywt.waverec2``
(tests check values and layout against them) but differentiable and on any device. Used by
FreeKD (Zhang et al., "FreeKD: Knowledge Distillation via Semantic Frequency Prompt", CVPR 2024),
whose bands come from a 3-level Haar DWT with zero padding.

One level, on the 2x2 blocks ``a b / c d`` of ``x`` (an odd height or width is first padded with one
row / column of zeros at the end, PyWavelets' ``mode="zero"``):

    cA = (a + b + c + d) / 2    approximation
    cH = (a + b - c - d) / 2    horizontal detail (difference along the height)
    cV = (a - b + c - d) / 2    vertical detail (difference along the width)
    cD = (a - b - c + d) / 2    diagonal detail

The transform is orthonormal on the padded map, so the inverse is the same butterfly. As in
PyWavelets, the multi-level inverse crops each reconstructed approximation to the size of the next
finer detail bands, and the final output has the padded (even) size: pass ``size`` to crop it to the
original map.

Half-precision inputs (e.g. under autocast) are computed and returned in float32; float32 and
float64 inputs keep their dtype.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mdistiller.frequency._layout import memory_format_of

__all__ = ["Details", "haar_detail_channels", "haar_dwt2", "haar_idwt2", "haar_wavedec2", "haar_waverec2",
           "transform_dtype"]

Details = Tuple[Tensor, Tensor, Tensor]
"""(cH, cV, cD) of one level, each (..., h, w)."""


def transform_dtype(x: Tensor) -> torch.dtype:
    """The dtype the transforms compute in: float64 stays, everything else becomes float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _analysis(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The butterfly of one level on an even-sized map: (cA, cH, cV, cD)."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    top, bottom = a + b, c + d
    left_right_top, left_right_bottom = a - b, c - d
    return (0.5 * (top + bottom), 0.5 * (top - bottom), 0.5 * (left_right_top + left_right_bottom),
            0.5 * (left_right_top - left_right_bottom))


def _synthesis(approx: Tensor, ch: Tensor, cv: Tensor, cd: Tensor,
               memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """The inverse butterfly: the 2h x 2w map whose analysis gives these four bands."""
    s, t = approx + ch, approx - ch
    u, v = cv + cd, cv - cd
    h, w = approx.shape[-2:]
    x = torch.empty((*approx.shape[:-2], 2 * h, 2 * w), dtype=approx.dtype, device=approx.device,
                    memory_format=memory_format)
    x[..., 0::2, 0::2] = 0.5 * (s + u)
    x[..., 0::2, 1::2] = 0.5 * (s - u)
    x[..., 1::2, 0::2] = 0.5 * (t + v)
    x[..., 1::2, 1::2] = 0.5 * (t - v)
    return x


class _HaarAnalysis(torch.autograd.Function):
    """One level as an autograd function. The transform is orthonormal, so its adjoint is its
    inverse: the backward is one synthesis of the four band gradients, instead of autograd's
    zero-filled gradient per strided slice (faster and lighter on memory)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        ctx.memory_format = memory_format_of(x)  # the gradient is given back in the input's layout
        return _analysis(x)

    @staticmethod
    def backward(ctx, grad_a: Tensor, grad_h: Tensor, grad_v: Tensor, grad_d: Tensor) -> Tensor:
        return _synthesis(grad_a, grad_h, grad_v, grad_d, ctx.memory_format)


class _HaarSynthesis(torch.autograd.Function):
    """The inverse of one level; its backward is one analysis (see :class:`_HaarAnalysis`)."""

    @staticmethod
    def forward(ctx, approx: Tensor, ch: Tensor, cv: Tensor, cd: Tensor) -> Tensor:
        return _synthesis(approx, ch, cv, cd)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return _analysis(grad)


def haar_dwt2(x: Tensor) -> Tuple[Tensor, Details]:
    """One level: ``(cA, (cH, cV, cD))``, each of size ``ceil(H/2) x ceil(W/2)``, like ``pywt.dwt2``."""
    x = x.to(transform_dtype(x))
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    approx, ch, cv, cd = _HaarAnalysis.apply(x)
    return approx, (ch, cv, cd)


def haar_idwt2(approx: Tensor, details: Details) -> Tensor:
    """Inverse of one level: a map of size ``2h x 2w`` (``pywt.idwt2``)."""
    dtype = transform_dtype(approx)
    return _HaarSynthesis.apply(*(t.to(dtype) for t in (approx, *details)))


def haar_wavedec2(x: Tensor, level: int) -> List[Union[Tensor, Details]]:
    """``[cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)]``, the layout of ``pywt.wavedec2``.

    Any level >= 1 is computed (PyWavelets only warns when it exceeds the useful depth; a 1x1 band
    stays 1x1).
    """
    if level < 1:
        raise ValueError(f"level must be at least 1, got {level}")
    details: List[Details] = []
    approx = x
    for _ in range(level):
        approx, detail = haar_dwt2(approx)
        details.append(detail)
    return [approx] + details[::-1]


def haar_waverec2(coeffs: Sequence[Union[Tensor, Details]], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Inverse of :func:`haar_wavedec2` (``pywt.waverec2``); ``size`` = (H, W) crops the result."""
    approx = coeffs[0]
    for detail in coeffs[1:]:
        h, w = detail[0].shape[-2:]
        approx = haar_idwt2(approx[..., :h, :w], detail)
    if size is not None:
        approx = approx[..., : size[0], : size[1]]
    return approx


def haar_detail_channels(x: Tensor, levels: int = 1) -> List[Tensor]:
    """The high-frequency (detail) bands of an L-level DWT of a (B, C, H, W) map as channel maps.

    Per level j = 1..L (finest first) one (B, 3C, h_j, w_j) map whose channel ``3c + o`` is
    orientation o (cH, cV, cD, PyWavelets' order) of channel c: the form in which a channel-wise
    method (CWD, PKD) runs on the high bands (FreeKD supplement B); the approximation is left out.
    """
    coeffs = haar_wavedec2(x, levels)
    return [torch.stack(detail, dim=2).flatten(1, 2) for detail in reversed(coeffs[1:])]
