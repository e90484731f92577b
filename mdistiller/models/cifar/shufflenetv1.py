"""ShuffleNet (v1) for 32x32 inputs (MDistiller's "ShuffleV1": groups 3, widths 240-480-960).

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018, with the ImageNet stem replaced by a 1x1 conv (no stride, no max-pool).
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.registry import cifar_models

from ._common import FeatureDict, PreactSequential, channel_shuffle, feature_dict, global_pool

__all__ = ["ShuffleNetV1", "ShuffleV1"]


class Bottleneck(nn.Module):
    """ShuffleNet unit: grouped 1x1-BN-ReLU, channel shuffle, 3x3 depthwise-BN, grouped 1x1-BN.

    Stride 1: added to the identity. Stride 2: concatenated with a 3x3 average-pooled shortcut, so
    the unit adds ``out_planes`` channels to its input. Returns ``(relu(merged), merged)``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid_planes = out_planes // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        # MDistiller applies a ReLU after the depthwise BN too (the paper has none); kept for parity.
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1: 1x1 stem (24 channels) and three stages, each opened by a stride-2 unit.

    Features: the stem (after ReLU) and each stage's output; ``get_bn_before_relu()`` gives the
    last ``bn3`` of each stage (its output plus the identity is the stage's pre-activation).
    MDistiller defines neither ``get_stage_channels`` nor ``get_bn_before_relu`` for this model.
    """

    def __init__(
        self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int, num_classes: int = 100
    ) -> None:
        super().__init__()
        self.stage_channels = [24] + list(out_planes)
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for stage, (planes, n) in enumerate(zip(out_planes, num_blocks)):
            units = []
            for i in range(n):
                if i == 0:
                    # The stem has only 24 channels, so the network's first pointwise conv is dense.
                    first_groups = 1 if stage == 0 else groups
                    units.append(Bottleneck(in_planes, planes - in_planes, 2, groups, first_groups))
                else:
                    units.append(Bottleneck(planes, planes, 1, groups, groups))
            in_planes = planes
            stages.append(PreactSequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[-1], num_classes)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        pooled = global_pool(f3)
        return self.linear(pooled), feature_dict([f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


@cifar_models.register("ShuffleV1")
def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet v1, g = 3, widths 240-480-960, 4-8-4 units."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)
