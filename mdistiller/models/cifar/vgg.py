"""VGG with batch normalization for 32x32 inputs (vgg8, vgg11, vgg13, vgg16, vgg19).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, with BN after every conv (Ioffe & Szegedy, 2015) and a single linear classifier on the
globally pooled last block. vgg8 is the 8-layer variant of Tian et al. (CRD, ICLR 2020).
"""

from typing import List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models.checkpoint_dir import cifar_teacher_checkpoint
from mdistiller.models.registry import cifar_models

from ._common import FeatureDict, feature_dict, global_pool

__all__ = ["VGG", "vgg8_bn", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

# Output channels of the convs in each of the five blocks.
VGG_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}


def conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """conv3x3-BN(-ReLU) for each width; the last ReLU is left out so the block ends at its BN."""
    layers: List[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv blocks separated by 2x2 max-pools, then global average pooling and a linear layer.

    Features: each block's output after its ReLU (pre-activation: its final BN). As in MDistiller,
    the max-pool between blocks 3 and 4 (``pool3``) is applied only to 64x64 inputs
    (Tiny-ImageNet); a 32x32 input reaches block 4 at 4x4 and keeps that size.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        self.stage_channels = [widths[-1] for widths in config]
        in_channels = [3] + self.stage_channels[:-1]
        self.block0 = conv_block(in_channels[0], config[0])
        self.block1 = conv_block(in_channels[1], config[1])
        self.block2 = conv_block(in_channels[2], config[2])
        self.block3 = conv_block(in_channels[3], config[3])
        self.block4 = conv_block(in_channels[4], config[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(self.stage_channels[-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: Tensor) -> Tuple[Tensor, FeatureDict]:
        is_tiny_imagenet = x.shape[2] == 64
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        f4_pre = self.block4(self.pool3(f3) if is_tiny_imagenet else f3)
        f4 = F.relu(f4_pre)
        pooled = global_pool(f4)
        feats = feature_dict([f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4_pre], pooled)
        return self.classifier(pooled), feats


@cifar_models.register("vgg8")
def vgg8_bn(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg8"], num_classes=num_classes)


@cifar_models.register("vgg11")
def vgg11_bn(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg11"], num_classes=num_classes)


@cifar_models.register("vgg13", checkpoint=cifar_teacher_checkpoint("vgg13"))
def vgg13_bn(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg13"], num_classes=num_classes)


@cifar_models.register("vgg16")
def vgg16_bn(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg16"], num_classes=num_classes)


@cifar_models.register("vgg19")
def vgg19_bn(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg19"], num_classes=num_classes)
