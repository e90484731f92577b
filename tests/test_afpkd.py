"""AFPKD: ReviewKD fusion of the student's stages feeding FreeKD's prompted band loss, the ramp, the
variant switches, gradients (prompts frozen) and the configs."""

import os

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.frequency.prompt import FrequencyBands
from mdistiller.losses.freekd import ChannelRelation
from mdistiller.losses.reviewkd import ReviewFusion
from mdistiller.models import cifar_model_dict
from prompt_files import write_prompt_file
from helpers import direct_level_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SFAKD_PAIRS = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd")))


def small_cfg(tmp_path, *opts):
    return build_cfg(None, ["DISTILLER.TYPE=AFPKD", "DISTILLER.TEACHER=wrn_16_2", "DISTILLER.STUDENT=resnet8",
                            "DATASET.IMAGE_SIZE=16", f"LOG.PREFIX={tmp_path}", *opts])


def build(cfg, seed=0):
    torch.manual_seed(seed)
    student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=10)
    teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=10)
    prompts = write_prompt_file(cfg, teacher)
    return distiller_dict["AFPKD"](student, teacher, cfg, num_data=10, num_classes=10).train(), prompts


def test_defaults_are_the_paper_variant_on_every_stage():
    section = build_cfg(None, ["DISTILLER.TYPE=AFPKD"]).AFPKD
    assert (section.NUM_STAGES, section.LOW_BAND, section.RELATION, section.FUSION) == (3, True, True, True)
    assert (section.DIVERSITY, section.TOKENS, section.DWT_LEVELS) == ("dice", 2, 3)


def test_loss_is_the_prompted_band_loss_of_the_fused_maps_with_the_ramp(tmp_path):
    cfg = small_cfg(tmp_path, "AFPKD.WARMUP_EPOCHS=4", "AFPKD.LOSS.FEAT_WEIGHT=2.0", "AFPKD.RELATION=False")
    distiller, prompts = build(cfg)
    assert isinstance(distiller.abfs, ReviewFusion) and len(distiller.abfs) == 3
    assert distiller.teacher_indices == distiller.student_indices == [1, 2, 3]
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, ramped = distiller(image=image, target=target, epoch=1)
    _, full = distiller(image=image, target=target, epoch=8)
    with torch.no_grad():
        s_feats = distiller.student(image)[1]["feats"]
        t_feats = distiller.teacher(image)[1]["feats"]
        fused = distiller.abfs([s_feats[1], s_feats[2], s_feats[3]])
        expected = 0.0
        for k, i in enumerate([1, 2, 3]):
            assert fused[k].shape == t_feats[i].shape  # (32, 16, 16), (64, 8, 8), (128, 4, 4)
            t_bands, s_bands = FrequencyBands.of(t_feats[i], 3), FrequencyBands.of(fused[k], 3)
            expected += direct_level_loss(prompts[k].masks(t_bands), t_bands, s_bands, low_band=True)
    assert full["loss_kd"].item() == pytest.approx(2.0 * float(expected), rel=1e-4)
    assert ramped["loss_kd"].item() == pytest.approx(full["loss_kd"].item() / 4, rel=1e-4)


@pytest.mark.parametrize("fusion", [True, False])
def test_gradients_reach_student_fusion_and_relations_only(tmp_path, fusion):
    cfg = small_cfg(tmp_path, f"AFPKD.FUSION={fusion}")
    distiller, _ = build(cfg)
    assert isinstance(distiller.abfs, ReviewFusion) == fusion
    assert isinstance(distiller.relation_t[0], ChannelRelation) and len(distiller.relation_s) == 3
    extra = [distiller.abfs, distiller.relation_t, distiller.relation_s]
    assert {id(p) for p in distiller.get_learnable_parameters()} == \
           {id(p) for m in [distiller.student] + extra for p in m.parameters()}
    _, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=30)
    assert set(losses) == {"loss_ce", "loss_kd"} and losses["loss_kd"].item() > 0
    sum(losses.values()).backward()
    for module in [distiller.student] + extra:
        assert all(p.grad is not None for p in module.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(not p.requires_grad and p.grad is None for p in distiller.prompts.parameters())


def test_without_prompts_it_says_how_to_make_them(tmp_path):
    cfg = small_cfg(tmp_path)
    with pytest.raises(ConfigError, match="tools/train_prompt.py --cfg .* or set AFPKD.PROMPT_PATH"):
        distiller_dict["AFPKD"](cifar_model_dict["resnet8"][0](num_classes=10),
                                cifar_model_dict["wrn_16_2"][0](num_classes=10), cfg, num_data=10, num_classes=10)


@pytest.mark.parametrize("pair", SFAKD_PAIRS)
def test_cifar_configs_cover_the_sfakd_pairs(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "afpkd", pair))
    sfakd = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd", pair))
    assert cfg.DISTILLER.TYPE == "AFPKD" and cfg.EXPERIMENT.TAG.startswith("afpkd,")
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.LR, cfg.SOLVER.EPOCHS) == \
           (sfakd.DISTILLER.TEACHER, sfakd.DISTILLER.STUDENT, sfakd.SOLVER.LR, sfakd.SOLVER.EPOCHS)


@pytest.mark.parametrize("pair", ["r34_r18", "r50_mv1"])
def test_imagenet_configs_load(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", pair, "afpkd.yaml"))
    assert cfg.DISTILLER.TYPE == "AFPKD" and cfg.DATASET.TYPE == "imagenet" and cfg.SOLVER.EPOCHS == 100
