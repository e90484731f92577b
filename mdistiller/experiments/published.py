"""Published top-1 accuracies (%) to put beside ours, as gathered in shared/specs/METHODS.md.

KD and DKD: the DKD paper's CIFAR-100 table (MDistiller's numbers); SFAKD and DIST: the authors' READMEs;
CAT-KD: its paper; teachers: MDistiller's CIFAR-100 teacher checkpoints. Keys use this toolkit's
model names (``cifar_model_dict`` / ``imagenet_model_dict``, ``timm:<name>``).

Heterogeneous pairs (docs/methods/ofa.md, deit.md): OFA-KD's Tables 1 (ImageNet) and 2 (CIFAR-100,
224 px inputs) with their KD / DKD / DIST / OFA columns, under timm names; rows with OFA's own
Swin-N / Swin-P students are left out (no timm name). Those tables could not be checked against
the paper here: their keys are in :data:`UNVERIFIED`, and reports mark them. DeiT: the distilled
models of the authors' README (RegNetY-16GF teacher, hard distillation, ImageNet-1k, 300 epochs).
SpectralKD: three ImageNet pairs, unverified (docs/methods/spectralkd.md).
"""

from typing import Dict, Optional, Set, Tuple

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
# DIST: the authors' README (hunto/DIST_KD at 2418f18, CIFAR-100 table; means of their runs, ± omitted).
for _t, _s, _acc in (("wrn_40_2", "wrn_40_1", 74.43), ("resnet56", "resnet20", 71.75), ("resnet32x4", "resnet8x4", 76.31),
                     ("ResNet50", "MobileNetV2", 68.66), ("resnet32x4", "ShuffleV1", 76.34),
                     ("resnet32x4", "ShuffleV2", 77.35)):
    PUBLISHED[("cifar100", "DIST", _t, _s)] = _acc

# OFA-KD's tables: (teacher, student, KD, DKD, DIST, OFA).
_T = "timm:"
_OFA_IMAGENET = (
    (_T + "deit_tiny_patch16_224", _T + "resnet18", 70.22, 69.39, 70.64, 71.34),
    (_T + "swin_tiny_patch4_window7_224", _T + "resnet18", 71.14, 71.10, 70.91, 71.85),
    (_T + "mixer_b16_224", _T + "resnet18", 70.89, 69.89, 70.66, 71.38),
    (_T + "deit_tiny_patch16_224", _T + "mobilenetv2_100", 70.87, 70.14, 71.08, 71.39),
    (_T + "swin_tiny_patch4_window7_224", _T + "mobilenetv2_100", 72.05, 71.71, 71.76, 72.32),
    (_T + "mixer_b16_224", _T + "mobilenetv2_100", 71.92, 70.93, 71.74, 72.12),
    (_T + "resnet50", _T + "deit_tiny_patch16_224", 75.10, 75.60, 75.13, 76.55),
    (_T + "convnext_tiny", _T + "deit_tiny_patch16_224", 74.00, 73.95, 74.07, 74.41),
    (_T + "mixer_b16_224", _T + "deit_tiny_patch16_224", 74.16, 72.82, 74.22, 75.13),
    (_T + "resnet50", _T + "resmlp_12_224", 77.41, 78.23, 77.71, 78.53),
    (_T + "convnext_tiny", _T + "resmlp_12_224", 76.84, 77.23, 77.24, 77.53),
    (_T + "swin_tiny_patch4_window7_224", _T + "resmlp_12_224", 76.67, 76.99, 77.25, 77.31),
)
_OFA_CIFAR = (
    (_T + "swin_tiny_patch4_window7_224", _T + "resnet18", 78.74, 80.26, 77.75, 80.54),
    (_T + "vit_small_patch16_224", _T + "resnet18", 77.26, 78.10, 76.49, 80.15),
    (_T + "mixer_b16_224", _T + "resnet18", 77.79, 78.67, 76.36, 79.39),
    (_T + "swin_tiny_patch4_window7_224", _T + "mobilenetv2_100", 74.68, 71.07, 72.89, 80.98),
    (_T + "vit_small_patch16_224", _T + "mobilenetv2_100", 72.77, 69.80, 72.54, 78.45),
    (_T + "mixer_b16_224", _T + "mobilenetv2_100", 73.33, 70.20, 73.26, 78.78),
    (_T + "convnext_tiny", _T + "deit_tiny_patch16_224", 72.99, 74.60, 73.55, 75.76),
    (_T + "mixer_b16_224", _T + "deit_tiny_patch16_224", 71.36, 73.44, 71.67, 73.90),
    (_T + "convnext_tiny", _T + "resmlp_12_224", 72.25, 73.22, 71.93, 81.22),
    (_T + "swin_tiny_patch4_window7_224", _T + "resmlp_12_224", 71.89, 72.82, 11.05, 80.63),
)
# Keys whose number could not be checked against the paper (all of OFA's tables, but the cells an
# author's or user's GitHub issue quotes: issue #19 quotes ConvNeXt-T -> DeiT-T KD 72.99).
UNVERIFIED: Set[PairKey] = set()
for _dataset, _rows in (("imagenet", _OFA_IMAGENET), ("cifar100", _OFA_CIFAR)):
    for _t, _s, *_accs in _rows:
        for _method, _acc in zip(("KD", "DKD", "DIST", "OFA"), _accs):
            PUBLISHED[(_dataset, _method, _t, _s)] = _acc
            UNVERIFIED.add((_dataset, _method, _t, _s))
UNVERIFIED.discard(("cifar100", "KD", _T + "convnext_tiny", _T + "deit_tiny_patch16_224"))

# DeiT's README (facebookresearch/deit README_deit.md): distilled from RegNetY-16GF, ImageNet-1k.
for _size, _acc in (("tiny", 74.5), ("small", 81.2), ("base", 83.4)):
    PUBLISHED[("imagenet", "DEIT", _T + "regnety_160", f"{_T}deit_{_size}_distilled_patch16_224")] = _acc

# SpectralKD (docs/methods/spectralkd.md): the Papers-with-Code archive's entries for arXiv 2412.19055,
# ImageNet-1k; the paper's table was not readable here, so they are unverified.
for _t, _s, _acc in (("cait_s24_224", "deit_tiny_patch16_224", 77.4), ("cait_s24_224", "deit_small_patch16_224", 82.2),
                     ("swin_small_patch4_window7_224", "swin_tiny_patch4_window7_224", 82.7)):
    PUBLISHED[("imagenet", "SPECTRALKD", _T + _t, _T + _s)] = _acc
    UNVERIFIED.add(("imagenet", "SPECTRALKD", _T + _t, _T + _s))

# A model trained alone (method NONE): the teachers MDistiller distributes.
PUBLISHED_ALONE: Dict[Tuple[str, str], float] = {
    ("cifar100", "resnet56"): 72.34,
    ("cifar100", "resnet110"): 74.31,
    ("cifar100", "resnet32x4"): 79.42,
    ("cifar100", "wrn_40_2"): 75.61,
    ("cifar100", "vgg13"): 74.64,
    ("cifar100", "ResNet50"): 79.34,
    # DeiT's README: the models trained without distillation
    ("imagenet", _T + "deit_tiny_patch16_224"): 72.2,
    ("imagenet", _T + "deit_small_patch16_224"): 79.9,
    ("imagenet", _T + "deit_base_patch16_224"): 81.8,
}
# OFA-KD's tables: teachers and students trained alone (CIFAR-100: ResNet18 74.01 quoted in issue
# #14, Swin-T 89.26 and ViT-S 92.04 in issue #22; the rest unverified).
_OFA_ALONE = {
    "imagenet": {"deit_tiny_patch16_224": 72.17, "swin_tiny_patch4_window7_224": 81.38, "mixer_b16_224": 76.62,
                 "resnet50": 80.38, "convnext_tiny": 82.05, "resnet18": 69.75, "mobilenetv2_100": 68.87,
                 "resmlp_12_224": 76.65},
    "cifar100": {"swin_tiny_patch4_window7_224": 89.26, "vit_small_patch16_224": 92.04, "mixer_b16_224": 87.29,
                 "convnext_tiny": 88.41, "resnet18": 74.01, "mobilenetv2_100": 73.68,
                 "deit_tiny_patch16_224": 68.00, "resmlp_12_224": 66.56},
}
UNVERIFIED_ALONE: Set[Tuple[str, str]] = set()
for _dataset, _accs in _OFA_ALONE.items():
    for _name, _acc in _accs.items():
        if (_dataset, _T + _name) not in PUBLISHED_ALONE:  # DeiT's README number, verified, comes first
            PUBLISHED_ALONE[(_dataset, _T + _name)] = _acc
            UNVERIFIED_ALONE.add((_dataset, _T + _name))
UNVERIFIED_ALONE -= {("cifar100", _T + "resnet18"), ("cifar100", _T + "swin_tiny_patch4_window7_224"),
                     ("cifar100", _T + "vit_small_patch16_224")}


def architecture(name: str) -> str:
    """A model name without the pretrained tag a timm name may carry (``timm:convnext_tiny.fb_in1k``
    -> ``timm:convnext_tiny``): the tables are keyed by architecture."""
    return name.split(".")[0] if name.startswith(_T) else name


def published_top1(dataset: str, method: str, teacher: Optional[str], student: str) -> Optional[float]:
    """The published top-1 of `method` distilling `teacher` into `student` (NONE: the model alone)."""
    teacher, student = architecture(teacher or ""), architecture(student)
    if method == "NONE":
        return PUBLISHED_ALONE.get((dataset, student))
    return PUBLISHED.get((dataset, method, teacher, student))


def published_verified(dataset: str, method: str, teacher: Optional[str], student: str) -> bool:
    """False for a published number that could not be checked against its paper."""
    teacher, student = architecture(teacher or ""), architecture(student)
    if method == "NONE":
        return (dataset, student) not in UNVERIFIED_ALONE
    return (dataset, method, teacher, student) not in UNVERIFIED
