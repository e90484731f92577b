"""OFA-KD: Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
Distillation" (NeurIPS 2023).

Each listed student stage gets an exit branch that maps its feature all the way to class logits; the
branches and the student's own head all learn the teacher's logits through the target-enhanced loss
(:mod:`mdistiller.losses.ofa`). The teacher contributes logits only, so any teacher works with any
student. Branches train with the student and are dropped at test time.

**Stage s** is the s-th of the student's last four feature taps, ``feats["feats"][-4:][s - 1]``:

- CIFAR zoo models: their ``feats`` list the stem then the stages, so for the CIFAR ResNets / WRNs /
  VGGs (three stages) stage 1 is the stem output and stages 2-4 the three stages; for the ImageNet-
  style CIFAR ResNet18 / ResNet50 stages 1-4 are ``layer1`` .. ``layer4``;
- timm CNNs (``TimmFeatureModel``): ResNet / RegNet / MobileNet / EfficientNet have the stem (or the
  first stride) as tap 0, so stages 1-4 are the four stride-4 .. stride-32 stages; ConvNeXt and Swin
  have four taps, the stages; MobileNetV2's stage 4 is its last block (320 channels), not the
  ``conv_head`` output the authors tap;
- token models (ViT, DeiT, Mixer, ResMLP): the adapter's four taps, evenly spaced blocks (2, 5, 8, 11
  of 12 by default; the authors tap blocks 1, 3, 9, 11).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.errors import ConfigError, IncompatibleModelError
from mdistiller.losses.ofa import ofa_loss

OFA_DEFAULTS = CN()
OFA_DEFAULTS.STAGES = [1, 2, 3, 4]
OFA_DEFAULTS.EPS = [1.0]  # one value for every output, or one per stage then the student's head
OFA_DEFAULTS.TEMPERATURE = 1.0
OFA_DEFAULTS.LOSS = CN()
OFA_DEFAULTS.LOSS.CE_WEIGHT = 1.0
OFA_DEFAULTS.LOSS.KD_WEIGHT = 1.0
OFA_DEFAULTS.LOSS.OFA_WEIGHT = 1.0
OFA_DEFAULTS.TOKEN = CN()
OFA_DEFAULTS.TOKEN.FINAL_GRID = 7
OFA_DEFAULTS.TOKEN.NUM_HEADS = 4

NUM_STAGES = 4


class SepConv(nn.Module):
    """Depthwise-separable downsampling block (DARTS' SepConv): dw 3x3 stride 2, 1x1, BN, ReLU,
    dw 3x3, 1x1 to ``out_channels``, BN, ReLU; convolutions without bias."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        c = in_channels
        self.op = nn.Sequential(
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False),
            nn.Conv2d(c, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ConvBranch(nn.Module):
    """OFA's branch for a CNN stage: ``4 - s`` SepConv blocks (channels doubling, the last one to
    ``width``) or, at stage 4, a 1x1 convolution to ``width``; global average pool; linear classifier."""

    def __init__(self, stage: int, in_channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        if stage < NUM_STAGES:
            blocks, c = [], in_channels
            for i in range(NUM_STAGES - stage):
                out = width if i == NUM_STAGES - stage - 1 else 2 * c
                blocks.append(SepConv(c, out))
                c = out
            self.project = nn.Sequential(*blocks)
        else:
            self.project = nn.Conv2d(in_channels, width, kernel_size=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feature: Tensor, prefix: Optional[Tensor] = None) -> Tensor:
        return self.fc(self.project(feature).mean(dim=(2, 3)))


class PatchMerging(nn.Module):
    """Swin's patch merging on a token grid: each 2x2 neighbourhood concatenated (4C), LayerNorm,
    a bias-free linear map to ``out_dim``, then ``act``. An odd side is zero-padded first."""

    def __init__(self, dim: int, out_dim: int, act: type = nn.GELU) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = act()

    def forward(self, grid: Tensor) -> Tensor:  # (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), out_dim)
        h, w = grid.shape[1:3]
        grid = F.pad(grid, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], dim=-1)
        return self.act(self.reduction(self.norm(x)))


class TokenBranch(nn.Module):
    """OFA's branch for a transformer / MLP stage: the patch tokens merged down towards a
    ``final_grid`` grid (``floor(log2(side / final_grid))`` mergings, the first to ``width``, GELU
    after each but the last of two or more), then ``max(4 - s, 1)`` ViT blocks of ``width`` with
    ``num_heads`` heads, then the class token (when the student has prefix tokens) or the mean token
    to a linear classifier.

    Prefix tokens (class, distillation, register) bypass the merging and rejoin the patch tokens
    before the blocks (the authors' code merged them with the patches and crashed on DeiT); with
    ``with_prefix`` (the student has them) a linear map widens them when the stage is narrower than
    ``width``. Without prefix tokens no such map is built: a parameter no loss reaches would stop
    DDP (``find_unused_parameters=False``) at its second step. Where no merging happens and the stage
    is narrower than ``width``, a linear map widens the patch tokens.
    """

    def __init__(self, stage: int, in_channels: int, side: int, width: int, num_classes: int,
                 final_grid: int, num_heads: int, with_prefix: bool = False) -> None:
        super().__init__()
        merges = max(int(math.floor(math.log2(side / final_grid))), 0) if side > final_grid else 0
        if merges:
            self.merge = nn.Sequential(*[
                PatchMerging(in_channels if i == 0 else width, width,
                             nn.Identity if merges > 1 and i == merges - 1 else nn.GELU)
                for i in range(merges)
            ])
        else:
            self.merge = nn.Linear(in_channels, width) if in_channels != width else nn.Identity()
        self.with_prefix = with_prefix
        if with_prefix:
            self.prefix_proj = nn.Linear(in_channels, width) if in_channels != width else nn.Identity()
        from timm.models.vision_transformer import Block  # timm loads only when a token branch is built

        self.blocks = nn.Sequential(*[Block(dim=width, num_heads=num_heads)
                                      for _ in range(max(NUM_STAGES - stage, 1))])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feature: Tensor, prefix: Optional[Tensor] = None) -> Tensor:
        grid = feature.permute(0, 2, 3, 1)  # (N, H, W, C), row-major like the token sequence
        tokens = self.merge(grid).flatten(1, 2)
        if self.with_prefix:
            tokens = torch.cat([self.prefix_proj(prefix), tokens], dim=1)
        tokens = self.blocks(tokens)
        readout = tokens[:, 0] if self.with_prefix else tokens.mean(dim=1)
        return self.fc(readout)


def init_branch_weights(module: nn.Module) -> None:
    """The authors' initialisation (their ``distillers/utils.py`` ``init_weights``): convs
    Kaiming-normal (fan_out) with the bias left at PyTorch's default (the stage-4 1x1 conv, the only
    one with a bias), BN (1, 0), linears truncated normal std 0.02 with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def probe_outputs(model: nn.Module, image_size: int) -> Tuple[Tensor, Dict[str, object]]:
    """``model``'s outputs on one zero image, in eval mode, leaving its mode as it was."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        return model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)


def stage_taps(feats: Dict[str, object], stages: Sequence[int]) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """(map, prefix tokens or None) of each stage s: the s-th of the last four taps."""
    maps = feats["feats"]
    prefixes = feats.get("prefix") or [None] * len(maps)
    offset = len(maps) - NUM_STAGES
    return [(maps[offset + s - 1], prefixes[offset + s - 1]) for s in stages]


@register_distiller("OFA", OFA_DEFAULTS)
class OFA(Distiller):
    """``loss_ce = CE_WEIGHT * CE(z_s, y)``; ``loss_kd = KD_WEIGHT * L_OFA(z_s, z_t; eps_last)``;
    ``loss_ofa = OFA_WEIGHT * sum_s L_OFA(branch_s, z_t; eps_s)`` (paper Eq. 4-5).

    ``L_OFA`` is the target-enhanced loss of :mod:`mdistiller.losses.ofa` at ``TEMPERATURE``. The
    branches (:class:`ConvBranch` for a CNN student, :class:`TokenBranch` for a ViT / Swin / Mixer,
    after the adapter's ``kind``) are ``max(D_s, D_t)`` (CNN) or ``D_s`` (token) wide, D the pre-logit
    widths. ``EPS``: one value for all outputs or ``len(STAGES) + 1`` values (the stages', then the
    student head's). A (N, K) soft target (mixup, cutmix, smoothing) is the CE target as it is and
    gives its argmax class to the loss's target mask.
    """

    def __init__(self, student, teacher, cfg, num_classes: int = 100, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.OFA
        self.stages = [int(s) for s in section.STAGES]
        if not self.stages or any(s not in range(1, NUM_STAGES + 1) for s in self.stages):
            raise ConfigError(f"OFA.STAGES must list stages from 1 to 4, got {list(section.STAGES)}.")
        eps = [float(e) for e in section.EPS]
        if len(eps) == 1:
            eps = eps * (len(self.stages) + 1)
        if len(eps) != len(self.stages) + 1:
            raise ConfigError(
                f"OFA.EPS has {len(section.EPS)} values: give one, or {len(self.stages) + 1} "
                f"(one per stage of OFA.STAGES {self.stages}, then the student's head)."
            )
        self.branch_eps, self.head_eps = eps[:-1], eps[-1]
        self.temperature = section.TEMPERATURE
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.kd_loss_weight = section.LOSS.KD_WEIGHT
        self.ofa_loss_weight = section.LOSS.OFA_WEIGHT

        size = image_size(cfg)
        _, s_feats = probe_outputs(student, size)
        _, t_feats = probe_outputs(teacher, size)
        if len(s_feats["feats"]) < NUM_STAGES:
            raise IncompatibleModelError(
                f"OFA needs four student stages; this student gives {len(s_feats['feats'])} feature maps"
            )
        d_s, d_t = s_feats["pooled_feat"].shape[1], t_feats["pooled_feat"].shape[1]
        token = getattr(student, "kind", "cnn") == "token"
        if token and d_s % section.TOKEN.NUM_HEADS:
            raise ConfigError(
                f"OFA.TOKEN.NUM_HEADS {section.TOKEN.NUM_HEADS} does not divide the student's width {d_s}: "
                "pick a divisor of it."
            )
        branches = {}
        for stage, (feature, prefix) in zip(self.stages, stage_taps(s_feats, self.stages)):
            if token:
                branches[str(stage)] = TokenBranch(stage, feature.shape[1], feature.shape[2], d_s, num_classes,
                                                   section.TOKEN.FINAL_GRID, section.TOKEN.NUM_HEADS,
                                                   with_prefix=prefix is not None)
            else:
                branches[str(stage)] = ConvBranch(stage, feature.shape[1], max(d_s, d_t), num_classes)
        self.branches = nn.ModuleDict(branches)
        init_branch_weights(self.branches)

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, feats_student = self.student(image)
        logits_teacher, _ = self.teacher_forward(image)
        branch_losses = [
            ofa_loss(self.branches[str(stage)](feature, prefix), logits_teacher, target, eps, self.temperature)
            for stage, eps, (feature, prefix) in zip(self.stages, self.branch_eps,
                                                     stage_taps(feats_student, self.stages))
        ]
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.kd_loss_weight * ofa_loss(logits_student, logits_teacher, target, self.head_eps,
                                                      self.temperature),
            "loss_ofa": self.ofa_loss_weight * sum(branch_losses),
        }
        return logits_student, losses
