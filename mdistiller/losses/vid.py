"""Variational information distillation (Ahn et al., CVPR 2019): a Gaussian with learned mean."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdistiller.losses._precision import float32_loss


def vid_regressor(s_channels: int, t_channels: int) -> nn.Sequential:
    """The mean predictor: 1x1 conv (C_s -> C_t), ReLU, 1x1 conv, ReLU, 1x1 conv, all bias-free."""

    def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)

    return nn.Sequential(
        conv1x1(s_channels, t_channels), nn.ReLU(), conv1x1(t_channels, t_channels), nn.ReLU(),
        conv1x1(t_channels, t_channels),
    )


def initial_log_scale(channels: int, init_pred_var: float, eps: float) -> torch.Tensor:
    """The log-scale whose `softplus(.) + eps` equals `init_pred_var`, for each of `channels`."""
    return torch.full((channels,), math.log(math.expm1(init_pred_var - eps)), dtype=torch.float32)


@float32_loss
def vid_loss(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Gaussian negative log-likelihood without its constant (paper eq. 6):
    `mean 0.5 * ((mu - t)^2 / var + log var)`, `var = softplus(log_scale) + eps` per channel."""
    pred_var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var)))
