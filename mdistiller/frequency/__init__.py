"""Frequency-domain building blocks shared by the distillers (FFT filters, wavelets, prompts)."""

from mdistiller.frequency.fft_filter import SmoothedFrequencyAugmentation, gaussian_highpass_mask

__all__ = ["SmoothedFrequencyAugmentation", "gaussian_highpass_mask"]
