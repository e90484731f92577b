"""FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): the hint regressor."""

import torch
import torch.nn as nn


class ConvReg(nn.Module):
    """Maps a student map of shape `s_shape` (N, C, H, W) onto a teacher map of shape `t_shape`.

    Conv by size ratio: student twice the teacher's size, a 3x3 stride-2 conv; half, a 4x4 stride-2
    transposed conv; otherwise (student at least as large) a valid conv of kernel
    `1 + s_H - t_H` x `1 + s_W - t_W`. Then BN and, with `use_relu`, ReLU. Attribute names are
    MDistiller's (`conv`, `bn`).
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"FitNet hint: student map {s_h}x{s_w} is smaller than the teacher's {t_h}x{t_w} "
                "by more than a factor 2; choose another FITNET.HINT_LAYER."
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x
