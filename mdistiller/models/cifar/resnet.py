"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (the CIFAR-10 networks of
Sec. 4.2: a 3x3 stem and three stages of 6n+2 layers). The "x4" variants widen every stage 4x
(Tian et al., "Contrastive Representation Distillation", ICLR 2020).
"""

from typing import List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.checkpoint_dir import cifar_teacher_checkpoint
from mdistiller.models.registry import cifar_models

from ._common import FeatureDict, PreactSequential, feature_dict, global_pool

__all__ = [
    "ResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut; returns ``(relu(sum), sum)``."""

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + identity
        return F.relu(preact), preact


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with stage widths ``num_filters`` = [stem, stage1, stage2, stage3].

    Features: the stem (after ReLU) and the output of each of the three stages.
    """

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.stage_channels = list(num_filters)

        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], num_filters[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(num_filters[1], num_filters[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(num_filters[2], num_filters[3], blocks_per_stage, stride=2)
        self.fc = nn.Linear(num_filters[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, num_blocks: int, stride: int) -> PreactSequential:
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        blocks = [BasicBlock(in_planes, planes, stride, downsample)]
        blocks += [BasicBlock(planes, planes) for _ in range(1, num_blocks)]
        return PreactSequential(*blocks)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        pooled = global_pool(f3)
        return self.fc(pooled), feature_dict([f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


@cifar_models.register("resnet8")
def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet14")
def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet20")
def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet32")
def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet44")
def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet56", checkpoint=cifar_teacher_checkpoint("resnet56"))
def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet110", checkpoint=cifar_teacher_checkpoint("resnet110"))
def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, [16, 16, 32, 64], num_classes=num_classes)


@cifar_models.register("resnet8x4")
def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, [32, 64, 128, 256], num_classes=num_classes)


@cifar_models.register("resnet32x4", checkpoint=cifar_teacher_checkpoint("resnet32x4"))
def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, [32, 64, 128, 256], num_classes=num_classes)
