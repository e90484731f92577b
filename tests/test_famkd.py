"""FAM-KD: the centre-square high-pass by hand, the frequency attention module against numpy, the
fusion with its frequency attention heads, the loss, the ramp, gradients and the configs."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.frequency import FrequencyAttention, centre_square_highpass_mask
from mdistiller.losses.famkd import famkd_loss
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SFAKD_PAIRS = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd")))


@pytest.mark.parametrize("h, w, rows, cols", [
    (32, 32, (15, 17), (15, 17)),   # cy 16, rh int(1.6) = 1
    (40, 20, (18, 22), (9, 11)),    # cy 20, rh 2; cx 10, rw 1
    (8, 8, (0, 0), (0, 0)),         # rh int(0.4) = 0: nothing zeroed
    (2, 2, (0, 0), (0, 0)),
])
def test_centre_square_mask_by_hand(h, w, rows, cols):
    expected = np.ones((h, w), dtype=np.float32)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = 0.0
    np.testing.assert_array_equal(centre_square_highpass_mask(h, w, 0.1).numpy(), expected)


@pytest.mark.parametrize("size", [(32, 32), (7, 5), (4, 4), (2, 2)])
def test_frequency_attention_equals_numpy(size):
    torch.manual_seed(0)
    module = FrequencyAttention(3, 4, size).double()
    with torch.no_grad():
        module.rate1.fill_(0.7)
        module.rate2.fill_(-0.3)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    xn = x.numpy()
    kernel = module.real_weight.detach().numpy() + 1j * module.imag_weight.detach().numpy()
    spectrum = np.einsum("bihw,iohw->bohw", np.fft.fft2(xn, norm="ortho"), kernel)
    shifted = np.fft.fftshift(spectrum, axes=(-2, -1)) * centre_square_highpass_mask(*size, 0.1).numpy()
    global_part = np.fft.ifft2(np.fft.ifftshift(shifted, axes=(-2, -1)), norm="ortho").real
    local = np.einsum("oi,bihw->bohw", module.w0.weight.detach().numpy()[:, :, 0, 0], xn) \
        + module.w0.bias.detach().numpy()[None, :, None, None]
    np.testing.assert_allclose(module(x).detach().numpy(), 0.7 * global_part - 0.3 * local, atol=1e-10)
    scale = 1.0 / 12
    assert 0 <= module.real_weight.min() and module.real_weight.max() <= scale and module.imag_weight.max() <= scale


def test_frequency_attention_removes_dc_on_large_maps_and_keeps_it_on_small():
    torch.manual_seed(0)
    large, small = FrequencyAttention(2, 2, (32, 32)), FrequencyAttention(2, 2, (8, 8))
    x32, x8 = torch.randn(1, 2, 32, 32) + 3.0, torch.randn(1, 2, 8, 8) + 3.0
    with torch.no_grad():
        assert large.global_branch(x32).mean(dim=(2, 3)).abs().max() < 1e-5   # DC term zeroed
        assert small.global_branch(x8).mean(dim=(2, 3)).abs().min() > 1e-3


def test_frequency_attention_in_float32_under_autocast():
    module = FrequencyAttention(2, 3, (4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.global_branch(torch.randn(1, 2, 4, 4).bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 4, 4)


def test_famkd_loss_is_the_sum_of_level_mses():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 1, 1))]
    b = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 1, 1))]
    expected = sum(((x - y) ** 2).mean() for x, y in zip(a, b))
    got = famkd_loss([torch.from_numpy(x) for x in a], [torch.from_numpy(y) for y in b])
    assert got.item() == pytest.approx(expected, rel=1e-12)


def build(*opts, student="resnet8", teacher="wrn_16_2", size=16):
    cfg = build_cfg(None, ["DISTILLER.TYPE=FAMKD", f"DATASET.IMAGE_SIZE={size}", *opts])
    torch.manual_seed(0)
    return distiller_dict["FAMKD"](cifar_model_dict[student][0](num_classes=10),
                                   cifar_model_dict[teacher][0](num_classes=10), cfg, num_data=10, num_classes=10)


@pytest.mark.slow
def test_fusion_heads_follow_the_teacher_maps_and_the_loss_ramps():
    distiller = build("FAMKD.WARMUP_EPOCHS=4", "FAMKD.FAMKD_WEIGHT=3.0").train()
    heads = [abf.conv2[0] for abf in reversed(distiller.abfs)]  # shallow level first
    assert all(isinstance(h, FrequencyAttention) for h in heads)
    assert [tuple(h.real_weight.shape) for h in heads] == [(64, 32, 16, 16), (64, 64, 8, 8), (64, 128, 4, 4),
                                                          (64, 128, 1, 1)]
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, ramped = distiller(image=image, target=target, epoch=1)
    _, full = distiller(image=image, target=target, epoch=20)
    with torch.no_grad():
        _, fs = distiller.student(image)
        _, ft = distiller.teacher(image)
        fused = distiller.abfs(fs["feats"][1:] + [fs["pooled_feat"][:, :, None, None]])
        targets = ft["feats"][1:] + [ft["pooled_feat"][:, :, None, None]]
        expected = sum(((f - t) ** 2).mean() for f, t in zip(fused, targets))
    assert all(f.shape == t.shape for f, t in zip(fused, targets)) and (fused[0] >= 0).all()
    assert full["loss_kd"].item() == pytest.approx(3.0 * expected.item(), rel=1e-5)
    assert ramped["loss_kd"].item() == pytest.approx(full["loss_kd"].item() / 4, rel=1e-5)


def test_gradients_reach_student_and_fusion_only():
    distiller = build().train()
    assert {id(p) for p in distiller.get_learnable_parameters()} == \
           {id(p) for m in (distiller.student, distiller.abfs) for p in m.parameters()}
    assert distiller.get_extra_parameters() == sum(p.numel() for p in distiller.abfs.parameters())
    _, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=30)
    sum(losses.values()).backward()
    assert all(p.grad is not None for m in (distiller.student, distiller.abfs) for p in m.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


@pytest.mark.parametrize("pair", SFAKD_PAIRS)
def test_cifar_configs_cover_the_sfakd_pairs_with_the_published_weights(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "famkd", pair))
    sfakd = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd", pair))
    assert cfg.DISTILLER.TYPE == "FAMKD" and cfg.EXPERIMENT.TAG.startswith("famkd,")
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.LR) == \
           (sfakd.DISTILLER.TEACHER, sfakd.DISTILLER.STUDENT, sfakd.SOLVER.LR)
    weight = 0.8 if pair == "res56_res20.yaml" else 5.0 if pair.startswith("wrn40_2") else 1.0
    assert cfg.FAMKD.FAMKD_WEIGHT == weight


@pytest.mark.parametrize("pair", ["r34_r18", "r50_mv1"])
def test_imagenet_configs_load(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", pair, "famkd.yaml"))
    assert cfg.DISTILLER.TYPE == "FAMKD" and cfg.DATASET.TYPE == "imagenet"
