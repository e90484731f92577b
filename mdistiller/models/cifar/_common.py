"""Pieces shared by the CIFAR / Tiny-ImageNet models: the feature dict and two small modules."""

from typing import List, Tuple, TypedDict

import torch
from torch import Tensor, nn


class FeatureDict(TypedDict):
    """What every model returns next to its logits.

    ``feats``: stage outputs, stem first. ``preact_feats``: the same stages before their final
    activation (the stem entry repeats ``feats[0]``). ``pooled_feat``: the globally pooled last
    feature map, shape (B, C), that the classifier sees.
    """

    feats: List[Tensor]
    preact_feats: List[Tensor]
    pooled_feat: Tensor


def feature_dict(feats: List[Tensor], preact_feats: List[Tensor], pooled_feat: Tensor) -> FeatureDict:
    return {"feats": feats, "preact_feats": preact_feats, "pooled_feat": pooled_feat}


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: view channels as (groups, C // groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PreactSequential(nn.Sequential):
    """A stage of blocks that each return ``(output, pre_activation)``.

    Returns the last block's pair, so the stage's pre-activation feature costs nothing extra.
    Being an ``nn.Sequential``, its parameters are named ``<stage>.<index>.<name>``.
    """

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        preact = x
        for block in self:
            x, preact = block(x)
        return x, preact


def global_pool(x: Tensor) -> Tensor:
    """Global average pooling to (B, C), whatever the spatial size."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
