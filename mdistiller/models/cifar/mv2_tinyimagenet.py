"""MobileNetV2 for Tiny-ImageNet (MDistiller's Tiny-ImageNet "MobileNetV2", width 1.0).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, with the
stride-2 stem replaced by a 1x1 conv (padding 1, so a 64x64 input becomes 66x66), ReLU6, biased
convolutions, and a 1x1 conv as the classifier.
"""

from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.registry import tiny_imagenet_models

from ._common import FeatureDict, feature_dict, global_pool

__all__ = ["MobileNetV2TinyImageNet", "mobilenetv2_tinyimagenet"]


class LinearBottleneck(nn.Module):
    """1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN; identity shortcut when the
    stride is 1 and the width is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int = 6) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return out + x if self.use_residual else out


def make_stage(
    repeat: int, in_channels: int, out_channels: int, stride: int, expand_ratio: int
) -> nn.Sequential:
    blocks = [LinearBottleneck(in_channels, out_channels, stride, expand_ratio)]
    blocks += [LinearBottleneck(out_channels, out_channels, 1, expand_ratio) for _ in range(repeat - 1)]
    return nn.Sequential(*blocks)


class MobileNetV2TinyImageNet(nn.Module):
    """MobileNetV2 (width 1.0) with a 1x1 stem, for 64x64 inputs.

    Features (as in MDistiller): the stem (after ReLU6), the outputs of stages 2, 3 and 4 (linear
    bottlenecks: not rectified, so ``preact_feats`` holds the same tensors) and the 1280-channel
    ``conv1`` map after ReLU6 (pre-activation: its BN). MDistiller defines no stage channels, BN
    list or pre-activations here and returns ``pooled_feat`` as (B, 1280, 1, 1); this one returns
    (B, 1280) like every other model.
    """

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleneck(32, 16, 1, 1)
        self.stage2 = make_stage(2, 16, 24, 2, 6)
        self.stage3 = make_stage(3, 24, 32, 2, 6)
        self.stage4 = make_stage(4, 32, 64, 2, 6)
        self.stage5 = make_stage(3, 64, 96, 1, 6)
        self.stage6 = make_stage(3, 96, 160, 1, 6)
        self.stage7 = LinearBottleneck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)
        self.stage_channels = [32, 24, 32, 64, 1280]

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        stage_ends = [stage[-1].residual[-1] for stage in (self.stage2, self.stage3, self.stage4)]
        return stage_ends + [self.conv1[1]]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = self.pre(x)
        f1 = self.stage2(self.stage1(f0))
        f2 = self.stage3(f1)
        f3 = self.stage4(f2)
        out = self.stage7(self.stage6(self.stage5(f3)))
        f4_pre = self.conv1[1](self.conv1[0](out))
        f4 = F.relu6(f4_pre)
        pooled = global_pool(f4)
        logits = self.conv2(pooled[:, :, None, None]).flatten(1)
        feats = feature_dict([f0, f1, f2, f3, f4], [f0, f1, f2, f3, f4_pre], pooled)
        return logits, feats


@tiny_imagenet_models.register("MobileNetV2")
def mobilenetv2_tinyimagenet(num_classes: int = 100) -> MobileNetV2TinyImageNet:
    return MobileNetV2TinyImageNet(num_classes=num_classes)
