"""Every MDistiller-style YAML file under configs/{cifar100,imagenet,tiny_imagenet} loads, and the
per-pair settings are MDistiller's (METHODS.md section 1)."""

import glob
import os

import pytest

from conftest import REPO_ROOT
from mdistiller.engine.cfg import CFG, build_cfg

CONFIG_DIRS = ("cifar100", "imagenet", "tiny_imagenet")
CONFIGS = sorted(p for d in CONFIG_DIRS for p in glob.glob(os.path.join(REPO_ROOT, "configs", d, "**", "*.yaml"),
                                                            recursive=True))
CIFAR_PAIRS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO_ROOT, "configs", "cifar100", "kd", "*.yaml")))
SMALL_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def rel(path: str) -> str:
    return os.path.relpath(path, os.path.join(REPO_ROOT, "configs"))


def cifar(method: str, pair: str):
    return build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", method, f"{pair}.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_loads(path):
    cfg = build_cfg(path)
    assert cfg.DISTILLER.TYPE and cfg.DATASET.TYPE in CONFIG_DIRS
    assert cfg.DATASET.TYPE == rel(path).split(os.sep)[0]


def test_method_defaults_are_mdistillers():
    assert (CFG.CRD.MODE, CFG.CRD.FEAT.DIM, CFG.CRD.FEAT.STUDENT_DIM, CFG.CRD.FEAT.TEACHER_DIM) == ("exact", 128, 256, 256)
    assert (CFG.CRD.LOSS.CE_WEIGHT, CFG.CRD.LOSS.FEAT_WEIGHT) == (1.0, 0.8)
    assert (CFG.CRD.NCE.K, CFG.CRD.NCE.MOMENTUM, CFG.CRD.NCE.TEMPERATURE) == (16384, 0.5, 0.07)
    assert (CFG.DKD.CE_WEIGHT, CFG.DKD.ALPHA, CFG.DKD.BETA, CFG.DKD.T, CFG.DKD.WARMUP) == (1.0, 1.0, 8.0, 4.0, 20)
    r = CFG.REVIEWKD
    assert (r.CE_WEIGHT, r.REVIEWKD_WEIGHT, r.WARMUP_EPOCHS, r.MAX_MID_CHANNEL, r.STU_PREACT) == (1.0, 1.0, 20, 512, False)
    assert r.SHAPES == r.OUT_SHAPES == [1, 8, 16, 32] and r.IN_CHANNELS == r.OUT_CHANNELS == [64, 128, 256, 256]
    assert CFG.KD.LOGIT_STAND is False and CFG.DKD.LOGIT_STAND is False
    assert CFG.SOLVER.DOT.DELTA == 0.075


@pytest.mark.parametrize("method", ["kd", "crd", "dkd", "reviewkd"])
def test_cifar_pairs_share_mdistillers_schedule(method):
    assert len(CIFAR_PAIRS) == 11
    for pair in CIFAR_PAIRS:
        cfg = cifar(method, pair)
        assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR_DECAY_STAGES) == (240, 64, [150, 180, 210])
        assert cfg.SOLVER.WEIGHT_DECAY == 5e-4
        assert cfg.SOLVER.LR == (0.01 if cfg.DISTILLER.STUDENT in SMALL_STUDENTS else 0.05)
        assert cfg.DISTILLER.TYPE == method.upper()
        assert cfg.SOLVER.TRAINER == ("crd" if method == "crd" else "base")


def test_dkd_beta_per_pair():
    beta = {pair: cifar("dkd", pair).DKD.BETA for pair in CIFAR_PAIRS}
    assert {p for p, b in beta.items() if b == 2.0} == {"res56_res20", "res110_res32"}
    assert {p for p, b in beta.items() if b == 6.0} == {"vgg13_vgg8", "vgg13_mv2", "wrn40_2_wrn_16_2", "wrn40_2_wrn_40_1"}
    assert all(b == 8.0 for p, b in beta.items() if b not in (2.0, 6.0))


def test_reviewkd_weights():
    assert build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "reviewkd.yaml")).REVIEWKD.REVIEWKD_WEIGHT == 5.0
    weights = {pair: cifar("reviewkd", pair).REVIEWKD.REVIEWKD_WEIGHT for pair in CIFAR_PAIRS}
    assert weights["res32x4_res8x4"] == 5.0 and weights["res32x4_shuv2"] == 8.0 and weights["res56_res20"] == 0.6


def test_imagenet_settings():
    dkd = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r34_r18", "dkd.yaml"))
    assert (dkd.DKD.BETA, dkd.DKD.T, dkd.DKD.WARMUP, dkd.SOLVER.LR, dkd.SOLVER.BATCH_SIZE) == (0.5, 1.0, 1, 0.2, 512)
    dkd = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r50_mv1", "dkd.yaml"))
    assert (dkd.DKD.BETA, dkd.DKD.T, dkd.DKD.WARMUP) == (2.0, 1.0, 1)
    dot = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r50_mv1", "dot.yaml"))
    assert (dot.SOLVER.TRAINER, dot.SOLVER.DOT.DELTA, dot.KD.TEMPERATURE) == ("dot", 0.09, 1.0)
    assert dot.DATASET.IMAGE_SIZE == 224
    tiny = build_cfg(os.path.join(REPO_ROOT, "configs", "tiny_imagenet", "dot", "r18_mv2.yaml"))
    assert (tiny.DATASET.IMAGE_SIZE, tiny.SOLVER.LR_DECAY_STAGES) == (64, [60, 120, 160])
