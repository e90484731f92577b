"""CWD: Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

Each channel of a (N, C, H, W) map becomes a distribution over its H*W positions,
``p = softmax(x / T)``; the loss is ``T^2 * sum_{n,c} KL(p_t || p_s) / (N * C)`` (Eq. 2-4).

In the frequency domain (FreeKD, Zhang et al. CVPR 2024, supplement B, Table 10: "the KL divergence
between the channel-wise probability map of the high-frequency bands") the same loss runs on the
Haar detail bands of each DWT level, every (channel, orientation) pair one channel
(:func:`mdistiller.frequency.haar.haar_detail_channels`), summed over the levels.
"""

import torch.nn.functional as F
from torch import Tensor

from mdistiller.frequency.haar import haar_detail_channels


def cwd_loss(s: Tensor, t: Tensor, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation of student map ``s`` towards teacher map ``t`` (same shape)."""
    n, c = s.shape[:2]
    log_p_s = F.log_softmax(s.reshape(n * c, -1).float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.reshape(n * c, -1).float() / temperature, dim=1)
    return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum() / (n * c)


def frequency_cwd_loss(s: Tensor, t: Tensor, temperature: float = 1.0, levels: int = 1) -> Tensor:
    """``sum_j cwd_loss(D_j(s), D_j(t))`` over the detail bands D_j of DWT levels j = 1..``levels``."""
    return sum(cwd_loss(a, b, temperature) for a, b in zip(haar_detail_channels(s, levels),
                                                          haar_detail_channels(t, levels)))
