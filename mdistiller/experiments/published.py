"""Published top-1 accuracies (%) to put beside ours, as gathered in shared/specs/METHODS.md.

KD and DKD: the DKD paper's CIFAR-100 table (MDistiller's numbers); SFAKD: the authors' README;
CAT-KD: its paper; teachers: MDistiller's CIFAR-100 teacher checkpoints. Keys use this toolkit's
model names (``cifar_model_dict`` / ``imagenet_model_dict``).
"""

from typing import Dict, Optional, Tuple

# (teacher, student) in METHODS.md's order, then the published KD and DKD top-1.
_CIFAR_KD_DKD = (
    ("resnet56", "resnet20", 70.66, 71.97),
    ("resnet110", "resnet32", 73.08, 74.11),
    ("resnet32x4", "resnet8x4", 73.33, 76.32),
    ("wrn_40_2", "wrn_16_2", 74.92, 76.23),
    ("wrn_40_2", "wrn_40_1", 73.54, 74.81),
    ("vgg13", "vgg8", 72.98, 74.68),
    ("resnet32x4", "ShuffleV1", 74.07, 76.45),
    ("wrn_40_2", "ShuffleV1", 74.83, 76.70),
    ("vgg13", "MobileNetV2", 67.37, 69.71),
    ("ResNet50", "MobileNetV2", 67.35, 70.35),
    ("resnet32x4", "ShuffleV2", 74.45, 77.07),
)
_CIFAR_SFAKD = (
    ("resnet56", "resnet20", 72.5), ("resnet110", "resnet32", 75.1), ("resnet32x4", "resnet8x4", 78.1),
    ("wrn_40_2", "wrn_16_2", 77.9), ("wrn_40_2", "wrn_40_1", 76.5), ("vgg13", "vgg8", 75.8),
    ("resnet32x4", "ShuffleV1", 77.8), ("wrn_40_2", "ShuffleV1", 78.0), ("vgg13", "MobileNetV2", 71.0),
    ("ResNet50", "MobileNetV2", 72.5), ("resnet32x4", "MobileNetV2", 78.5),
)

PairKey = Tuple[str, str, str, str]  # dataset, method, teacher, student

PUBLISHED: Dict[PairKey, float] = {}
for _t, _s, _kd, _dkd in _CIFAR_KD_DKD:
    PUBLISHED[("cifar100", "KD", _t, _s)] = _kd
    PUBLISHED[("cifar100", "DKD", _t, _s)] = _dkd
for _t, _s, _acc in _CIFAR_SFAKD:
    PUBLISHED[("cifar100", "SFAKD", _t, _s)] = _acc
PUBLISHED[("imagenet", "SFAKD", "ResNet34", "ResNet18")] = 72.5
PUBLISHED[("imagenet", "SFAKD", "ResNet50", "MobileNetV1")] = 73.0
PUBLISHED[("cifar100", "CATKD", "resnet32x4", "resnet8x4")] = 76.91

# A model trained alone (method NONE): the teachers MDistiller distributes.
PUBLISHED_ALONE: Dict[Tuple[str, str], float] = {
    ("cifar100", "resnet56"): 72.34,
    ("cifar100", "resnet110"): 74.31,
    ("cifar100", "resnet32x4"): 79.42,
    ("cifar100", "wrn_40_2"): 75.61,
    ("cifar100", "vgg13"): 74.64,
    ("cifar100", "ResNet50"): 79.34,
}


def published_top1(dataset: str, method: str, teacher: Optional[str], student: str) -> Optional[float]:
    """The published top-1 of `method` distilling `teacher` into `student` (NONE: the model alone)."""
    if method == "NONE":
        return PUBLISHED_ALONE.get((dataset, student))
    return PUBLISHED.get((dataset, method, teacher or "", student))
