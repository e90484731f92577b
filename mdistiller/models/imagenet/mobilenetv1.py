"""MobileNetV1 for ImageNet with the distillation feature outputs.

Parameter names and shapes are MDistiller's (``model.<i>.<j>``, ``fc``), so MDistiller MobileNetV1
checkpoints load with ``strict=True``. torchvision has no MobileNetV1 weights: ``pretrained=True``
reads a local file, by default ``download_ckpts/imagenet_teachers/MobileNetV1.pth`` (see :mod:`mdistiller.models.checkpoint_dir`).
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdistiller.errors import CheckpointError
from mdistiller.models.checkpoint_dir import download_ckpts_dir
from mdistiller.models.imagenet._weights import load_state_dict_file, load_weights
from mdistiller.models.registry import imagenet_models

__all__ = ["MobileNetV1", "mobilenet_v1", "DEFAULT_CHECKPOINT"]

DEFAULT_CHECKPOINT = Path(download_ckpts_dir()) / "imagenet_teachers" / "MobileNetV1.pth"

# (output channels, stride) of the stem and of the 13 depthwise-separable blocks.
_LAYERS = [(32, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
_LAYERS += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
# Index one past the last layer of each feature stage: stem, then strides 4, 8, 16, 32.
_STAGE_ENDS = (1, 4, 6, 12, 14)


class _ConvStack(nn.Sequential):
    """A conv / BN / ReLU sequence ending in BatchNorm then ReLU, readable before that ReLU."""

    @property
    def bn_before_relu(self) -> nn.BatchNorm2d:
        return self[-2]

    def forward_preact(self, x: Tensor) -> Tensor:
        """The output before the final ReLU (the last BatchNorm's output)."""
        for module in list(self)[:-1]:
            x = module(x)
        return x


class ConvBNReLU(_ConvStack):
    """3x3 convolution, BatchNorm, ReLU: the stem."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(_ConvStack):
    """3x3 depthwise convolution, BN, ReLU, then 1x1 pointwise convolution, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class MobileNetV1(nn.Module):
    """MobileNetV1 from "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications" (Howard et al., 2017), width multiplier 1.0, as in MDistiller.

    ``forward`` returns ``(logits, feats)``:

    - ``feats["preact_feats"]``: the stem (``model.0``, 32 channels, stride 2) and the outputs of
      ``model.3``, ``model.5``, ``model.11``, ``model.13`` (128, 256, 512, 1024 channels;
      strides 4, 8, 16, 32), each before its final ReLU;
    - ``feats["feats"]``: the same five tensors after ReLU;
    - ``feats["pooled_feat"]``: the globally average-pooled last feature map, shape (B, 1024).

    MDistiller returns only the last four stages; the stem is added here so that, as for the
    ResNets, ``feats[0]`` is the stem and ``feats[1:]`` are the four stages at strides 4 .. 32.
    Pooling is adaptive, so any input size works. Weights keep PyTorch's default initialisation,
    as in MDistiller.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        in_channels = 3
        for index, (out_channels, stride) in enumerate(_LAYERS):
            block = ConvBNReLU if index == 0 else DepthwiseSeparableConv
            layers.append(block(in_channels, out_channels, stride))
            in_channels = out_channels
        self.model = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def _stage_outputs(self) -> List[_ConvStack]:
        return [self.model[end - 1] for end in _STAGE_ENDS]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        """The last BatchNorm of each stage, one per ``feats[1:]`` (as in MDistiller)."""
        return [layer.bn_before_relu for layer in self._stage_outputs()[1:]]

    def get_stage_channels(self) -> List[int]:
        """Channels of each entry of ``feats["feats"]``: 32 (stem), 128, 256, 512, 1024."""
        return [layer.bn_before_relu.num_features for layer in self._stage_outputs()]

    def forward(self, x: Tensor) -> Tuple[Tensor, Dict[str, Any]]:
        preact_feats: List[Tensor] = []
        feats: List[Tensor] = []
        start = 0
        for end in _STAGE_ENDS:
            for layer in self.model[start : end - 1]:
                x = layer(x)
            preact = self.model[end - 1].forward_preact(x)
            x = F.relu(preact)
            preact_feats.append(preact)
            feats.append(x)
            start = end
        pooled = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(pooled)
        return logits, {"feats": feats, "preact_feats": preact_feats, "pooled_feat": pooled}


@imagenet_models.register("MobileNetV1")
def mobilenet_v1(
    pretrained: bool = False,
    progress: bool = True,
    checkpoint: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> MobileNetV1:
    """MobileNetV1 (Howard et al., 2017).

    ``pretrained`` loads ``checkpoint`` (default :data:`DEFAULT_CHECKPOINT`), a state dict saved
    as a plain dict of tensors or as ``{"model": state_dict}``. ``progress`` is accepted for a
    signature shared with the ResNets; nothing is downloaded. ``kwargs`` go to
    :class:`MobileNetV1`.
    """
    state_dict = None
    if pretrained:
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise CheckpointError(
                f"MobileNetV1 teacher weights not found: place the file {path.name} in "
                f"{path.parent} (torchvision has no MobileNetV1 weights to download)."
            )
        state_dict = load_state_dict_file(path)
    model = MobileNetV1(**kwargs)
    if state_dict is not None:
        load_weights(model, state_dict, str(path))
    return model
