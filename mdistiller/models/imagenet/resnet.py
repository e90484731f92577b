"""ResNet-18/34/50/101/152 for ImageNet with the distillation feature outputs.

Built on torchvision's ResNet and blocks, so parameter names and shapes are torchvision's (which are
also MDistiller's): torchvision's ImageNet weights load with ``strict=True``.
"""

from typing import Any, Dict, List, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
    WeightsEnum,
)
from torchvision.models import resnet as tv_resnet

from mdistiller.models.imagenet._weights import load_torchvision_state_dict, load_weights
from mdistiller.models.registry import imagenet_models

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's basic block that can also return its output before the final ReLU."""

    @property
    def bn_before_relu(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward_preact(self, x: Tensor) -> Tensor:
        """The residual sum, i.e. ``forward(x)`` without the final ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.forward_preact(x))


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's bottleneck block that can also return its output before the final ReLU."""

    @property
    def bn_before_relu(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward_preact(self, x: Tensor) -> Tensor:
        """The residual sum, i.e. ``forward(x)`` without the final ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.forward_preact(x))


class ResNet(tv_resnet.ResNet):
    """ResNet from "Deep Residual Learning for Image Recognition" (He et al., CVPR 2016).

    torchvision's ResNet (same constructor arguments, same parameter names) whose ``forward``
    returns ``(logits, feats)``:

    - ``feats["preact_feats"]``: the stem (``bn1`` output, stride 2, before max-pooling) and the
      output of ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32), each before its final ReLU;
    - ``feats["feats"]``: the same five tensors after ReLU;
    - ``feats["pooled_feat"]``: the globally average-pooled ``layer4`` output, shape (B, C).

    These are MDistiller's ImageNet ResNet features, with one fix: MDistiller's stem "preact" is
    overwritten by an in-place ReLU, here it is the true pre-activation. ``get_stage_channels`` and
    ``get_bn_before_relu`` follow the CIFAR models' convention (one channel count per ``feats``
    entry, one BatchNorm per stage) where MDistiller's ImageNet ResNet returned ResNet-50's
    ``[256, 512, 1024, 2048]`` for every depth and omitted ``layer1``'s BatchNorm.
    Pooling is adaptive, so any input size works.
    """

    def _stages(self) -> List[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        """The last BatchNorm of each stage (``layer1`` .. ``layer4``), one per ``feats[1:]``."""
        return [stage[-1].bn_before_relu for stage in self._stages()]

    def get_stage_channels(self) -> List[int]:
        """Channels of each entry of ``feats["feats"]``: stem, then ``layer1`` .. ``layer4``."""
        return [self.bn1.num_features] + [bn.num_features for bn in self.get_bn_before_relu()]

    def forward(self, x: Tensor) -> Tuple[Tensor, Dict[str, Any]]:  # type: ignore[override]
        stem = self.bn1(self.conv1(x))
        preact_feats = [stem]
        feats = [F.relu(stem)]
        x = self.maxpool(feats[0])
        for stage in self._stages():
            for block in stage[:-1]:
                x = block(x)
            preact = stage[-1].forward_preact(x)
            x = F.relu(preact)
            preact_feats.append(preact)
            feats.append(x)
        pooled = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(pooled)
        return logits, {"feats": feats, "preact_feats": preact_feats, "pooled_feat": pooled}


def _resnet(
    block: Type[Union[BasicBlock, Bottleneck]],
    layers: List[int],
    weights: WeightsEnum,
    pretrained: bool,
    progress: bool,
    **kwargs: Any,
) -> ResNet:
    state_dict = load_torchvision_state_dict(weights, progress) if pretrained else None
    model = ResNet(block, layers, **kwargs)
    if state_dict is not None:
        load_weights(model, state_dict, weights.url)
    return model


@imagenet_models.register("ResNet18")
def resnet18(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-18 (He et al., 2016); ``pretrained`` loads torchvision's ``IMAGENET1K_V1`` weights.

    ``kwargs`` go to :class:`ResNet` (e.g. ``num_classes``, ``zero_init_residual``).
    """
    weights = ResNet18_Weights.IMAGENET1K_V1
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, pretrained, progress, **kwargs)


@imagenet_models.register("ResNet34")
def resnet34(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-34 (He et al., 2016); ``pretrained`` loads torchvision's ``IMAGENET1K_V1`` weights."""
    weights = ResNet34_Weights.IMAGENET1K_V1
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, pretrained, progress, **kwargs)


@imagenet_models.register("ResNet50")
def resnet50(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-50 (He et al., 2016); ``pretrained`` loads torchvision's ``IMAGENET1K_V1`` weights.

    V1 (76.13% top-1) is the teacher MDistiller's published ImageNet results use, not V2.
    """
    weights = ResNet50_Weights.IMAGENET1K_V1
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, pretrained, progress, **kwargs)


@imagenet_models.register("ResNet101")
def resnet101(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-101 (He et al., 2016); ``pretrained`` loads torchvision's ImageNet V1 weights."""
    weights = ResNet101_Weights.IMAGENET1K_V1
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, pretrained, progress, **kwargs)


@imagenet_models.register("ResNet152")
def resnet152(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-152 (He et al., 2016); ``pretrained`` loads torchvision's ImageNet V1 weights."""
    weights = ResNet152_Weights.IMAGENET1K_V1
    return _resnet(Bottleneck, [3, 8, 36, 3], weights, pretrained, progress, **kwargs)
