"""FGD: Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022.

On one pyramid level, with the student map already aligned to the teacher's channels:

- masks from the ground-truth boxes scaled to the map (Eq. 1-3): foreground ``M = 1 / (h_box * w_box)``
  inside each box (the largest where boxes overlap), background ``1 - [M > 0]`` normalised to sum 1;
- teacher attention (Eq. 4-5) with temperature T: spatial ``A^S = H W softmax(mean_c |F| / T)``,
  channel ``A^C = C softmax(mean_hw |F| / T)``;
- focal feature loss (Eq. 6): ``alpha * sum M A^S A^C (F_t - F_s)^2 + beta * (same with background)``,
  summed and divided by the batch size; attention loss (Eq. 7):
  ``gamma * (|A^C_t - A^C_s|_1 + |A^S_t - A^S_s|_1) / N``;
- global loss (Eq. 8-9): GcBlock context ``F + MLP(sum_j softmax(W_k F)_j F_j)`` with separate
  learnable blocks for student and teacher, ``lambda * sum (R(F_t) - R(F_s))^2 / N``.
"""

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fgd_attention(x: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Spatial (N, H, W) and channel (N, C) attention of a map (N, C, H, W)."""
    n, c, h, w = x.shape
    value = x.float().abs()
    spatial = h * w * F.softmax((value.mean(dim=1) / temperature).reshape(n, -1), dim=1)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def fgd_masks(boxes: Sequence[Tensor], image_sizes: Sequence[Tuple[int, int]], size: Tuple[int, int]
              ) -> Tuple[Tensor, Tensor]:
    """Foreground and background masks (N, H, W) from xyxy ``boxes`` of images of (h, w) ``image_sizes``.

    Box coordinates scale by the map size over the unpadded image size (the authors' code); the box
    covers rows floor(y0)..ceil(y1) and columns floor(x0)..ceil(x1), ends included.
    """
    h, w = size
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    fg = torch.zeros(len(boxes), h, w, device=device)
    for i, (b, (img_h, img_w)) in enumerate(zip(boxes, image_sizes)):
        if b.numel() == 0:
            continue
        x0 = torch.floor(b[:, 0] / img_w * w).long()
        x1 = torch.ceil(b[:, 2] / img_w * w).long()
        y0 = torch.floor(b[:, 1] / img_h * h).long()
        y1 = torch.ceil(b[:, 3] / img_h * h).long()
        area = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0)).float()
        for j in range(b.size(0)):
            region = fg[i, y0[j]:y1[j] + 1, x0[j]:x1[j] + 1]
            fg[i, y0[j]:y1[j] + 1, x0[j]:x1[j] + 1] = torch.clamp(region, min=float(area[j]))
    bg = (fg <= 0).float()
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
    return fg, bg


class GlobalContext(nn.Module):
    """GcBlock of FGD's global loss: ``x + MLP(context(x))``; the last conv starts at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add_conv[-1].weight)
        nn.init.zeros_(self.channel_add_conv[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        weights = F.softmax(self.conv_mask(x).reshape(n, 1, -1), dim=2)      # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, -1), weights.transpose(1, 2))    # (N, C, 1)
        return x + self.channel_add_conv(context.reshape(n, c, 1, 1))


class FGDLoss(nn.Module):
    """FGD on one level; the global-context blocks are its learnable parts. ``forward`` returns the
    weighted focal, attention and global terms as a dict."""

    def __init__(self, channels: int, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                 gamma: float = 5e-4, lambda_: float = 5e-6) -> None:
        super().__init__()
        self.temperature, self.alpha, self.beta, self.gamma, self.lambda_ = temperature, alpha, beta, gamma, lambda_
        self.context_s = GlobalContext(channels)
        self.context_t = GlobalContext(channels)

    def forward(self, s: Tensor, t: Tensor, fg: Tensor, bg: Tensor) -> dict:
        n = s.size(0)
        spatial_t, channel_t = fgd_attention(t, self.temperature)
        spatial_s, channel_s = fgd_attention(s, self.temperature)
        weight = (spatial_t.unsqueeze(1) * channel_t[:, :, None, None]).sqrt()
        diff = (s.float() - t.float()) * weight
        focal = (self.alpha * (diff.pow(2) * fg.unsqueeze(1)).sum() + self.beta * (diff.pow(2) * bg.unsqueeze(1)).sum()) / n
        attention = self.gamma * ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / n
        relation = self.lambda_ * (self.context_s(s.float()) - self.context_t(t.float())).pow(2).sum() / n
        return {"focal": focal, "attention": attention, "global": relation}
