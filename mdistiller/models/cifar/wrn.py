"""Wide Residual Networks (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016: pre-activation residual blocks
(BN-ReLU-conv), depth 6n+4, widths 16k-32k-64k.
"""

from typing import List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.checkpoint_dir import cifar_teacher_checkpoint
from mdistiller.models.registry import cifar_models

from ._common import FeatureDict, feature_dict, global_pool

__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    When the width changes, the shortcut is a 1x1 conv applied to the *activated* input
    (``convShortcut``, named as in MDistiller so checkpoints load).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: Optional[nn.Conv2d] = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor, normalized: Optional[Tensor] = None) -> Tensor:
        """``normalized``, when given, is ``self.bn1(x)`` already computed by the caller."""
        act = F.relu(self.bn1(x) if normalized is None else normalized)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``num_layers`` blocks, the first one changing width and stride."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride, drop_rate)]
        blocks += [BasicBlock(out_planes, out_planes, 1, drop_rate) for _ in range(1, num_layers)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor, normalized: Optional[Tensor] = None) -> Tensor:
        x = self.layer[0](x, normalized)
        for block in self.layer[1:]:
            x = block(x)
        return x


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 inputs.

    Pre-activation network, so (as in MDistiller) ``feats`` are the raw stem conv and the residual
    stream after each stage (not rectified, can be negative), and ``preact_feats`` are those streams
    after the BN that the next ReLU consumes: ``block2.layer[0].bn1``, ``block3.layer[0].bn1`` and
    the final ``bn1`` (the ``get_bn_before_relu()`` list). Each of these BNs runs once per forward;
    MDistiller runs them twice in training, which updates their running statistics twice.
    """

    def __init__(
        self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stage_channels = channels

        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f1_pre = self.block2.layer[0].bn1(f1)
        f2 = self.block2(f1, f1_pre)
        f2_pre = self.block3.layer[0].bn1(f2)
        f3 = self.block3(f2, f2_pre)
        f3_pre = self.bn1(f3)
        pooled = global_pool(F.relu(f3_pre))
        return self.fc(pooled), feature_dict([f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


@cifar_models.register("wrn_16_1")
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=16, widen_factor=1, num_classes=num_classes)


@cifar_models.register("wrn_16_2")
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, num_classes=num_classes)


@cifar_models.register("wrn_40_1")
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=40, widen_factor=1, num_classes=num_classes)


@cifar_models.register("wrn_40_2", checkpoint=cifar_teacher_checkpoint("wrn_40_2"))
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, num_classes=num_classes)
