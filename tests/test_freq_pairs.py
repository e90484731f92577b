"""FreeKD, AFPKD and FAM-KD on every CIFAR-100 pair of their configs (the 11 SFAKD pairs): the modules
are sized from the teacher's maps (8x8, 4x4 and, through the DWT, 2x2 and 1x1 bands; the student's
2x2 MobileNetV2 maps brought to the teacher's size) and one training step computes a finite loss."""

import os
from functools import lru_cache

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.frequency import FrequencyAttention
from mdistiller.frequency.prompt import FrequencyBands
from mdistiller.models import cifar_model_dict
from prompt_files import write_prompt_file

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PAIRS = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd")))
METHODS = ("freekd", "afpkd", "famkd")


@lru_cache(maxsize=None)
def teacher_maps(name: str):
    """The teacher's `feats` shapes at 32x32 (stem excluded)."""
    torch.manual_seed(0)
    model = cifar_model_dict[name][0](num_classes=100).eval()
    with torch.no_grad():
        return [tuple(f.shape[1:]) for f in model(torch.zeros(1, 3, 32, 32))[1]["feats"][1:]]


def test_every_method_has_the_sfakd_pairs():
    for method in METHODS:
        assert sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", method))) == PAIRS


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", PAIRS)
def test_pair_builds_with_modules_sized_from_the_maps_and_trains_one_step(tmp_path, pair, method):
    # FAM-KD's complex weights are width x C x h x w per level (the student's widths by default): a narrow fusion
    # keeps the test light and changes no map-derived size.
    narrow = ["FAMKD.MID_CHANNELS=[16,16,16,16]"] if method == "famkd" else []
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", method, pair), [f"LOG.PREFIX={tmp_path}", *narrow])
    torch.manual_seed(0)
    student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=100)
    teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=100)
    if method != "famkd":
        write_prompt_file(cfg, teacher)
    distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, num_data=10, num_classes=100).train()
    maps = teacher_maps(cfg.DISTILLER.TEACHER)
    if method == "famkd":
        heads = [level.head[0] for level in reversed(distiller.hierarchy)]
        assert all(isinstance(h, FrequencyAttention) for h in heads)
        expected = maps[-(len(heads) - 1):] + [(maps[-1][0], 1, 1)]  # (out channels, h, w) per level + pooled
        assert [tuple(h.real_weight.shape[1:]) for h in heads] == expected
    else:
        stages = cfg[cfg.DISTILLER.TYPE].NUM_STAGES
        distilled = maps[-stages:]
        assert [p.tokens.shape for p in distiller.prompts] == [(4, 2, c) for c, _, _ in distilled]
        bands = FrequencyBands.of(torch.zeros(1, *distilled[-1]), 3)
        assert bands.highs[0].shape[-2:] == tuple((s + 1) // 2 for s in distilled[-1][1:])  # 4x4 -> 2x2, 8x8 -> 4x4
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    logits, losses = distiller(image=image, target=target, epoch=30)
    assert logits.shape == (2, 100) and torch.isfinite(losses["loss_kd"]) and losses["loss_kd"].item() > 0
