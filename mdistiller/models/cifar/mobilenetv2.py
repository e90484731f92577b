"""MobileNetV2 for 32x32 inputs (MDistiller's "MobileNetV2" = width 0.5, expansion 6).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, as adapted
to CIFAR by Tian et al. (CRD, ICLR 2020): stride-2 3x3 stem, every block (even expansion 1) has
its 1x1 expansion conv, ReLU (not ReLU6), classifier on the globally pooled 1280-channel map.
"""

from typing import List, Tuple

from torch import Tensor, nn

from mdistiller.models.registry import cifar_models

from ._common import FeatureDict, feature_dict, global_pool

__all__ = ["MobileNetV2", "mobile_half"]

# (expansion, output channels, blocks, first stride); expansion None means "the model's ratio".
BLOCK_SETTINGS = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear bottleneck).

    Identity shortcut when stride is 1 and the width is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with ``width_mult`` and ``expand_ratio`` (the "T" of CRD's ``mobilenetv2_T_w``).

    Features (as in MDistiller): the stem (after ReLU) and the outputs of block groups 1, 2, 4
    and 6, i.e. the last group at each resolution (the 16x16, 8x8, 4x4 and 2x2 maps of a 32x32
    input). Those four are linear-bottleneck outputs: no ReLU follows them, so they can be negative
    and ``preact_feats`` holds the very same tensors; ``get_bn_before_relu()`` gives the BN that
    ends each of those groups. Runs on inputs down to 8x8 (16x16 gives a 1x1 last map).
    """

    def __init__(self, width_mult: float = 0.5, expand_ratio: int = 6, num_classes: int = 100) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, in_channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in BLOCK_SETTINGS:
            out_channels = int(c * width_mult)
            group = []
            for stride in [s] + [1] * (n - 1):
                group.append(InvertedResidual(in_channels, out_channels, stride, t or expand_ratio))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(in_channels, self.last_channel, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.stage_channels = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        f0 = self.conv1(x)
        out = self.blocks[0](f0)
        f1 = self.blocks[1](out)
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = global_pool(self.conv2(f4))
        feats = feature_dict([f0, f1, f2, f3, f4], [f0, f1, f2, f3, f4], pooled)
        return self.classifier(pooled), feats


@cifar_models.register("MobileNetV2")
def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2, width 0.5, expansion 6 (MDistiller's "MobileNetV2")."""
    return MobileNetV2(width_mult=0.5, expand_ratio=6, num_classes=num_classes)
