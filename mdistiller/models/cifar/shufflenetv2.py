"""ShuffleNetV2 1.0x for 32x32 inputs (MDistiller's "ShuffleV2").

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018, with the ImageNet stem replaced by a 1x1 conv (no stride, no max-pool).
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.registry import cifar_models, tiny_imagenet_models

from ._common import FeatureDict, PreactSequential, channel_shuffle, feature_dict, global_pool

__all__ = ["ShuffleNetV2", "ShuffleV2"]

# net size -> (stage widths + last conv width, units per stage after the down-sampling unit)
SHUFFLENETV2_CONFIGS = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class BasicBlock(nn.Module):
    """Stride-1 unit: split channels in half, transform one half (1x1-BN-ReLU, 3x3 depthwise-BN,
    1x1-BN-ReLU), concatenate with the other half, shuffle.

    Returns ``(output, preact)`` where ``preact`` is the concatenation *before* the ReLU of the
    branch and *before* the shuffle (MDistiller's definition), so ``relu(preact)`` equals the output
    up to the channel shuffle.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        kept, branch = x.chunk(2, dim=1)
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        branch = self.bn3(self.conv3(branch))
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2)
        return out, torch.cat([kept, branch], 1)


class DownBlock(nn.Module):
    """Stride-2 unit: both halves see the whole input (left: 3x3 depthwise-BN, 1x1-BN-ReLU;
    right: 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU); concatenate and shuffle.

    Returns ``(output, preact)`` like :class:`BasicBlock`.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        left = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn5(self.conv5(self.bn4(self.conv4(right))))
        preact = torch.cat([left, right], 1)
        return channel_shuffle(F.relu(preact), 2), preact


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: 1x1 stem (24 channels), three stages (a down-sampling unit then stride-1
    units), a 1x1 conv-BN-ReLU to ``out_channels[3]``, global pooling and a linear classifier.

    Features: the stem (after ReLU) and each stage's output. Pre-activations follow MDistiller
    (unshuffled, see :class:`BasicBlock`). ``get_bn_before_relu()`` gives each stage's last
    ``bn3``: it normalizes the transformed half, so its ``num_features`` is half the stage width
    (the other half of the pre-activation passes through un-normalized); MDistiller raises there.
    """

    def __init__(
        self, out_channels: Sequence[int], num_blocks: Sequence[int], num_classes: int = 100
    ) -> None:
        super().__init__()
        self.stage_channels = [24] + list(out_channels[:3])
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        stages = []
        for width, n in zip(out_channels[:3], num_blocks):
            units = [DownBlock(in_channels, width)] + [BasicBlock(width) for _ in range(n)]
            stages.append(PreactSequential(*units))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        pooled = global_pool(F.relu(self.bn2(self.conv2(f3))))
        return self.linear(pooled), feature_dict([f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


@cifar_models.register("ShuffleV2")
@tiny_imagenet_models.register("ShuffleV2")
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (widths 116-232-464, last conv 1024)."""
    out_channels, num_blocks = SHUFFLENETV2_CONFIGS[1.0]
    return ShuffleNetV2(out_channels, num_blocks, num_classes=num_classes)
