"""A two-stage CNN for small images, following mdistiller's model contract:
``logits, feats = model(x)`` with ``feats["feats"]`` (stem first), ``feats["preact_feats"]`` and
``feats["pooled_feat"]``, plus ``get_stage_channels()`` and ``get_bn_before_relu()``."""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.models import cifar_models


class ConvBN(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels))


class TinyCNN(nn.Module):
    """stem (16 ch) -> stage 1 (32 ch, stride 2) -> stage 2 (64 ch, stride 2) -> global pool -> fc."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.stem = ConvBN(3, 16)
        self.stage1 = ConvBN(16, 32, stride=2)
        self.stage2 = ConvBN(32, 64, stride=2)
        self.fc = nn.Linear(64, num_classes)

    def get_stage_channels(self) -> List[int]:
        return [16, 32, 64]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.stage1[1], self.stage2[1]]

    def forward(self, x: Tensor):
        feats, preacts = [], []
        for block in (self.stem, self.stage1, self.stage2):
            preact = block(x)
            x = F.relu(preact)
            preacts.append(preact)
            feats.append(x)
        preacts[0] = feats[0]  # the stem entry repeats feats[0], as in mdistiller's models
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


@cifar_models.register("tiny_cnn")
def tiny_cnn(num_classes: int = 100) -> TinyCNN:
    return TinyCNN(num_classes=num_classes)
