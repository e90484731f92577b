"""SpectralKD (Tian, Xu, Li & Pan, "SpectralKD: A Unified Framework for Interpreting and Distilling
Vision Transformers via Spectral Analysis", arXiv 2412.19055): the spectral alignment loss.

For a pair of aligned maps s, t of shape (B, C, H, W), F the orthonormal real 2-D FFT over (H, W)
(``rfft2(norm="ortho")``, H x (W // 2 + 1) coefficients per channel) and [Re, Im] the stacking of
the real and imaginary parts:

    L_pair(s, t)  = mean over (b, c, u, v, part) of ([Re F(s), Im F(s)] - [Re F(t), Im F(t)])^2
    L_spectral    = 1/P * sum_p L_pair(s_p, t_p)              (P tapped layer pairs)

as the authors' ``losses.py`` computes it (github.com/thy960112/SpectralKD @968be0e). Their
channel alignment is parameter-free: a teacher wider than the student has its channels
average-pooled (adaptive pooling over the channel axis) down to the student's count,
:func:`pool_channels`.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mdistiller.losses._precision import float32_loss

__all__ = ["pool_channels", "spectral_mse", "spectralkd_loss"]


def pool_channels(x: Tensor, channels: int) -> Tensor:
    """``x`` (B, C, H, W) with its C channels adaptive-average-pooled to ``channels`` (unchanged when equal)."""
    if x.shape[1] == channels:
        return x
    return F.adaptive_avg_pool3d(x.unsqueeze(1), (channels, x.shape[2], x.shape[3])).squeeze(1)


@float32_loss
def spectral_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE between the stacked real and imaginary parts of ``rfft2(norm="ortho")`` of two (B, C, H, W) maps."""
    if student.shape != teacher.shape:
        raise ValueError(f"spectral_mse needs maps of one shape, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    spectrum_s = torch.view_as_real(torch.fft.rfft2(student, norm="ortho"))
    spectrum_t = torch.view_as_real(torch.fft.rfft2(teacher, norm="ortho"))
    return F.mse_loss(spectrum_s, spectrum_t)


def spectralkd_loss(students: Sequence[Tensor], teachers: Sequence[Tensor]) -> Tensor:
    """The mean over the layer pairs of :func:`spectral_mse`."""
    if len(students) != len(teachers) or not students:
        raise ValueError(f"spectralkd_loss needs one teacher map per student map, got {len(students)} and {len(teachers)}")
    losses = [spectral_mse(s, t) for s, t in zip(students, teachers)]
    return sum(losses[1:], losses[0]) / len(losses)
