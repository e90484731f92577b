"""Frequency-domain building blocks shared by the distillers: the FFT filters (SFAKD's SFA with its
Gaussian high-pass mask, FAM-KD's frequency attention), the Haar DWT / IDWT, FreeKD's frequency
prompt, and the removal of the DC term."""

from mdistiller.frequency.dc import remove_dc
from mdistiller.frequency.fft_filter import (FrequencyAttention, SmoothedFrequencyAugmentation,
                                             centre_square_highpass_mask, gaussian_highpass_mask)
from mdistiller.frequency.haar import haar_detail_channels, haar_dwt2, haar_idwt2, haar_wavedec2, haar_waverec2
from mdistiller.frequency.prompt import (FrequencyBands, FrequencyPrompt, apply_masks, dice_diversity,
                                         mask_diversity, prompt_masks, soft_jaccard_diversity)

__all__ = [
    "FrequencyAttention",
    "FrequencyBands",
    "FrequencyPrompt",
    "SmoothedFrequencyAugmentation",
    "apply_masks",
    "centre_square_highpass_mask",
    "dice_diversity",
    "gaussian_highpass_mask",
    "haar_detail_channels",
    "haar_dwt2",
    "haar_idwt2",
    "haar_wavedec2",
    "haar_waverec2",
    "mask_diversity",
    "prompt_masks",
    "remove_dc",
    "soft_jaccard_diversity",
]
