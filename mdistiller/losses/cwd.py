"""CWD: Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

Each channel of a (N, C, H, W) map becomes a distribution over its H*W positions,
``p = softmax(x / T)``; the loss is ``T^2 * sum_{n,c} KL(p_t || p_s) / (N * C)`` (Eq. 2-4).
"""

import torch.nn.functional as F
from torch import Tensor


def cwd_loss(s: Tensor, t: Tensor, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation of student map ``s`` towards teacher map ``t`` (same shape)."""
    n, c = s.shape[:2]
    log_p_s = F.log_softmax(s.reshape(n * c, -1).float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.reshape(n * c, -1).float() / temperature, dim=1)
    return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum() / (n * c)
