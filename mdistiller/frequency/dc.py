"""The DC (zero-frequency) term of feature maps, which dominates transformer features.

ViT / Swin features carry large per-channel means; a loss comparing spectra is then mostly a
comparison of those means. ScaleKD (NeurIPS 2024) zeroes the DC coefficient of both maps' DCT before
its frequency-view MSE. For the 2-D DFT the (0, 0) coefficient is the map's sum, so zeroing it is
subtracting each channel's spatial mean: by Parseval (orthonormal transform), an MSE between the
centred maps is the MSE between the two spectra with their DC coefficients dropped.
"""

from torch import Tensor

__all__ = ["remove_dc"]


def remove_dc(x: Tensor) -> Tensor:
    """``x`` (..., H, W) minus its mean over (H, W): every spectral coefficient but (0, 0) unchanged."""
    return x - x.mean(dim=(-2, -1), keepdim=True)
