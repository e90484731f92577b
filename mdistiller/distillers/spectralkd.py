"""SpectralKD: Tian, Xu, Li & Pan, "SpectralKD: A Unified Framework for Interpreting and Distilling
Vision Transformers via Spectral Analysis" (arXiv 2412.19055, 2024)."""

from typing import Dict, List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, check_rules, positive
from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller, register_distiller
from mdistiller.distillers.feature_shapes import feature_shapes, model_name
from mdistiller.errors import ConfigError
from mdistiller.frequency import remove_dc
from mdistiller.losses.kd import kd_loss
from mdistiller.losses.spatial import common_size, pool_to_size
from mdistiller.losses.spectralkd import pool_channels, spectralkd_loss

CONNECTORS = ("pool", "conv")

SPECTRALKD_DEFAULTS = CN()
SPECTRALKD_DEFAULTS.STUDENT_TAPS = [-4, -3, -2, -1]  # indices into the student's feats, paired in order
SPECTRALKD_DEFAULTS.TEACHER_TAPS = [-4, -3, -2, -1]  # with these of the teacher
SPECTRALKD_DEFAULTS.CONNECTOR = "pool"  # "pool": the wider map's channels averaged down (authors'); "conv": 1x1 conv
SPECTRALKD_DEFAULTS.REMOVE_DC = False  # compare the spectra without their (0, 0) coefficient (token features)
SPECTRALKD_DEFAULTS.TEMPERATURE = 1.0
SPECTRALKD_DEFAULTS.LOSS = CN()
SPECTRALKD_DEFAULTS.LOSS.CE_WEIGHT = 0.1  # 1 - alpha, alpha = 0.9 in every recipe of the authors' README
SPECTRALKD_DEFAULTS.LOSS.KD_WEIGHT = 0.9  # alpha
SPECTRALKD_DEFAULTS.LOSS.FEAT_WEIGHT = 0.2  # w_fft: 0.2 CaiT-S24 -> DeiT-T / S, 0.05 Swin-S -> Swin-T


SPECTRALKD_RULES = {"CONNECTOR": OneOf(CONNECTORS), "TEMPERATURE": positive}


@register_distiller("SPECTRALKD", SPECTRALKD_DEFAULTS, SPECTRALKD_RULES)
class SPECTRALKD(Distiller):
    """``loss_ce = CE_WEIGHT * CE(z_s, y)``, ``loss_kd = KD_WEIGHT * T^2 KL(p_t || p_s)``,
    ``loss_feat = FEAT_WEIGHT * L_spectral``: the authors' total (1 - alpha) CE + alpha KD +
    beta w_fft L_fft with beta = 1 (:mod:`mdistiller.losses.spectralkd` for L_spectral).

    Tap pair p compares the student's ``feats[STUDENT_TAPS[p]]`` with the teacher's
    ``feats[TEACHER_TAPS[p]]``; token models give their patch grids as maps (the adapter drops the
    prefix tokens). The larger map is average-pooled to the common (smaller) size: the authors need
    equal sizes, and an upsampled map has no content at the frequencies it adds. Channels, CONNECTOR:
    ``pool`` averages the wider map's channels down to the narrower's count (no parameters; the
    authors pool a wider teacher, the student is pooled here when it is the wider one); ``conv`` maps
    the student to the teacher's channels with a learned bias-free 1x1 conv where they differ.
    ``REMOVE_DC True`` subtracts each channel's spatial mean from both maps first, which zeroes their
    (0, 0) coefficient and leaves every other one (:func:`~mdistiller.frequency.remove_dc`): the DC
    term dominates token (ViT / Swin) features (ScaleKD's observation).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN, **data_info) -> None:
        super().__init__(student, teacher)
        section = cfg.SPECTRALKD
        check_rules(section, SPECTRALKD_RULES, "SPECTRALKD.")
        if len(section.STUDENT_TAPS) != len(section.TEACHER_TAPS) or not section.STUDENT_TAPS:
            raise ConfigError(f"SPECTRALKD.STUDENT_TAPS {list(section.STUDENT_TAPS)} and SPECTRALKD.TEACHER_TAPS "
                              f"{list(section.TEACHER_TAPS)} pair taps in order: give both lists the same, non-zero length.")
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.kd_loss_weight = section.LOSS.KD_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT
        self.temperature = section.TEMPERATURE
        self.remove_dc = section.REMOVE_DC
        self.connector_kind = section.CONNECTOR
        size = image_size(cfg)
        maps_s = tap_shapes(feature_shapes(student, size)["feats"], section.STUDENT_TAPS, student, "STUDENT_TAPS")
        maps_t = tap_shapes(feature_shapes(teacher, size)["feats"], section.TEACHER_TAPS, teacher, "TEACHER_TAPS")
        self.student_taps, self.teacher_taps = list(section.STUDENT_TAPS), list(section.TEACHER_TAPS)
        self.sizes = [common_size(s, t) for s, t in zip(maps_s, maps_t)]
        if self.remove_dc and (1, 1) in self.sizes:
            pair = self.sizes.index((1, 1))
            raise ConfigError(
                f"SPECTRALKD.REMOVE_DC leaves nothing of tap pair {pair} (student {self.student_taps[pair]}, teacher "
                f"{self.teacher_taps[pair]}), which is 1x1 at DATASET.IMAGE_SIZE {size}: drop that pair from "
                "SPECTRALKD.STUDENT_TAPS / TEACHER_TAPS or raise DATASET.IMAGE_SIZE.")
        self.channels = [(s[-3], t[-3]) for s, t in zip(maps_s, maps_t)]
        if self.connector_kind == "conv":
            self.connectors = nn.ModuleList(
                nn.Conv2d(c_s, c_t, kernel_size=1, bias=False) if c_s != c_t else nn.Identity()
                for c_s, c_t in self.channels)

    def aligned_maps(self, feats_student: Dict, feats_teacher: Dict) -> Tuple[List[Tensor], List[Tensor]]:
        """The compared (student, teacher) map of each tap pair: same size, same channels, DC removed if asked."""
        students, teachers = [], []
        for p, (i_s, i_t) in enumerate(zip(self.student_taps, self.teacher_taps)):
            s = pool_to_size(feats_student["feats"][i_s], self.sizes[p])
            t = pool_to_size(feats_teacher["feats"][i_t], self.sizes[p])
            if self.connector_kind == "conv":
                s = self.connectors[p](s)
            else:
                narrower = min(self.channels[p])
                s, t = pool_channels(s, narrower), pool_channels(t, narrower)
            if self.remove_dc:
                s, t = remove_dc(s), remove_dc(t)
            students.append(s)
            teachers.append(t)
        return students, teachers

    def forward_train(self, image: Tensor, target: Tensor, **batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits_student, feats_student = self.student(image)
        logits_teacher, feats_teacher = self.teacher_forward(image)
        students, teachers = self.aligned_maps(feats_student, feats_teacher)
        losses = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student, target),
            "loss_kd": self.kd_loss_weight * kd_loss(logits_student, logits_teacher, self.temperature),
            "loss_feat": self.feat_loss_weight * spectralkd_loss(students, teachers),
        }
        return logits_student, losses


def tap_shapes(shapes: Sequence, taps: Sequence[int], model: nn.Module, key: str) -> List:
    """The shapes of ``feats[i]`` for i in ``taps``; an index out of range is refused, naming the valid ones."""
    count = len(shapes)
    for index in taps:
        if not -count <= index < count:
            raise ConfigError(f"SPECTRALKD.{key} {list(taps)}: {model_name(model)} gives {count} feature maps, so "
                              f"use indices from {-count} to {count - 1}.")
    return [shapes[index] for index in taps]
