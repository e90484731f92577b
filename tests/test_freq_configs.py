"""The SFAKD / CANKD / CATKD configs load strictly and carry the published per-pair settings."""

import glob
import os

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.models import cifar_model_dict

METHOD_DIRS = {"sfakd": "SFAKD", "cankd": "CANKD", "catkd": "CATKD"}
CONFIGS = sorted(
    [(path, method) for name, method in METHOD_DIRS.items()
     for path in glob.glob(os.path.join(REPO_ROOT, "configs", "cifar100", name, "*.yaml"))]
    + [(path, method) for name, method in METHOD_DIRS.items()
       for path in glob.glob(os.path.join(REPO_ROOT, "configs", "imagenet", "*", f"{name}.yaml"))]
)


def config(*parts):
    return build_cfg(os.path.join(REPO_ROOT, "configs", *parts))


def test_imagenet_pairs_have_every_method():
    assert len(CONFIGS) == 11 + 11 + 11 + 2 * 3


@pytest.mark.parametrize("path, method", CONFIGS, ids=lambda v: os.path.relpath(v, REPO_ROOT) if "/" in v else v)
def test_config_loads_with_its_method(path, method):
    cfg = build_cfg(path)
    assert cfg.DISTILLER.TYPE == method
    assert cfg.EXPERIMENT.TAG.startswith(method.lower() + ",")


def test_cankd_and_catkd_cover_the_kd_pairs():
    kd_pairs = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "kd")))
    for method in ("cankd", "catkd"):
        assert sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", method))) == kd_pairs
        for pair in kd_pairs:  # same teacher, student and schedule as KD
            kd, other = config("cifar100", "kd", pair), config("cifar100", method, pair)
            assert (kd.DISTILLER.TEACHER, kd.DISTILLER.STUDENT, kd.SOLVER.LR) == \
                   (other.DISTILLER.TEACHER, other.DISTILLER.STUDENT, other.SOLVER.LR)


@pytest.mark.parametrize("pair, beta", [("res32x4_res8x4.yaml", 15.0), ("wrn40_2_wrn_16_2.yaml", 12.0),
                                        ("vgg13_vgg8.yaml", 4.5)])
def test_catkd_published_betas(pair, beta):
    assert config("cifar100", "catkd", pair).CATKD.LOSS.CAT_WEIGHT == beta


def test_cankd_mu_and_sfakd_faithful_defaults():
    assert config("cifar100", "cankd", "res32x4_res8x4.yaml").CANKD.LOSS.FEAT_WEIGHT == 5.0
    assert config("imagenet", "r34_r18", "cankd.yaml").CANKD.LOSS.FEAT_WEIGHT == 5.0
    sfakd = config("cifar100", "sfakd", "res32x4_res8x4.yaml").SFAKD
    assert (sfakd.LOSS.CE_WEIGHT, sfakd.LOSS.KD_WEIGHT, sfakd.LOSS.FEAT_WEIGHT) == (0.0, 0.0, 1.0)
    assert sfakd.TEACHER_CLASSIFIER and not sfakd.POOLED and sfakd.CUT_OFF == 0.1


def test_cankd_heterogeneous_pair_builds():
    """vgg13 (512 x 4x4) -> MobileNetV2 (160 x 2x2): teacher pooled to 2x2, 1x1 connector 160 -> 512."""
    cfg = config("cifar100", "cankd", "vgg13_mv2.yaml")
    torch.manual_seed(0)
    student, teacher = cifar_model_dict["MobileNetV2"][0](num_classes=100), cifar_model_dict["vgg13"][0](num_classes=100)
    distiller = distiller_dict["CANKD"](student, teacher, cfg, num_data=10, num_classes=100)
    assert distiller.feature_size == (2, 2)
    assert (distiller.connector.in_channels, distiller.connector.out_channels) == (160, 512)
    distiller.train()
    with torch.no_grad():
        logits, losses = distiller(image=torch.randn(2, 3, 32, 32), target=torch.randint(0, 100, (2,)), epoch=1)
    assert logits.shape == (2, 100) and torch.isfinite(losses["loss_kd"])
