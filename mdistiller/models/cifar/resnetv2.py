"""ImageNet-style ResNets adapted to 32x32 inputs (ResNet18, ResNet34, ResNet50).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, with the ImageNet stem
(7x7 stride-2 conv + max-pool) replaced by a 3x3 stride-1 conv, as is usual for CIFAR. The same
networks serve Tiny-ImageNet (64x64 inputs, ``num_classes=200``).
"""

import os
from typing import List, Sequence, Tuple, Type, Union

import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.checkpoint_dir import cifar_teacher_checkpoint, download_ckpts_dir
from mdistiller.models.registry import cifar_models, tiny_imagenet_models

from ._common import FeatureDict, PreactSequential, feature_dict, global_pool

__all__ = ["ResNet", "ResNet18", "ResNet34", "ResNet50"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus shortcut; returns ``(relu(sum), sum)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus shortcut; returns ``(relu(sum), sum)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """Four-stage ResNet (widths 64-128-256-512 times the block expansion) with a 3x3 stem.

    Features: the stem (after ReLU) and the output of each of the four stages, so
    ``get_stage_channels()`` is ``[64, 64e, 128e, 256e, 512e]`` (e = 1 for BasicBlock, 4 for
    Bottleneck). MDistiller returns the fixed list ``[256, 512, 1024, 2048]`` here, which neither
    counts the stem nor fits ResNet18; this one lists the channels the features actually have.
    """

    def __init__(
        self,
        block: Block,
        num_blocks: Sequence[int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        widths = [64, 128, 256, 512]
        self.stage_channels = [64] + [w * block.expansion for w in widths]

        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (width, n) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, width, s))
                in_planes = width * block.expansion
            stages.append(PreactSequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Goyal et al., 2017: each residual branch starts as zero, so each block as identity.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [layer[-1].last_bn() for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4, f4_pre = self.layer4(f3)
        pooled = global_pool(f4)
        feats = feature_dict(
            [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4_pre], pooled
        )
        return self.linear(pooled), feats


@cifar_models.register("ResNet18")
@tiny_imagenet_models.register("ResNet18", checkpoint=os.path.join(download_ckpts_dir(), "tiny_imagenet_teachers", "ResNet18_vanilla", "ti_res18"))
def ResNet18(num_classes: int = 100) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@cifar_models.register("ResNet34")
def ResNet34(num_classes: int = 100) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@cifar_models.register("ResNet50", checkpoint=cifar_teacher_checkpoint("ResNet50"))
def ResNet50(num_classes: int = 100) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
