"""FAM-KD: the centre-square high-pass by hand, the frequency attention module and the local attention
against numpy, the whole hierarchy's loss against a numpy computation, the extra parameters of
res32x4 -> res8x4 by formula, the ramp, gradients, config errors and the configs."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.frequency import FrequencyAttention, centre_square_highpass_mask
from mdistiller.losses.famkd import LocalAttentionFusion, famkd_loss
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
def numpy_fam(module: FrequencyAttention, xn: np.ndarray) -> np.ndarray:
    """The frequency attention module written with numpy's FFT: rate1 * global + rate2 * conv1x1."""
    kernel = module.real_weight.detach().numpy() + 1j * module.imag_weight.detach().numpy()
    spectrum = np.einsum("bihw,iohw->bohw", np.fft.fft2(xn, norm="ortho"), kernel)
    mask = centre_square_highpass_mask(*xn.shape[-2:], 0.1).numpy()
    shifted = np.fft.fftshift(spectrum, axes=(-2, -1)) * mask
    global_part = np.fft.ifft2(np.fft.ifftshift(shifted, axes=(-2, -1)), norm="ortho").real
    local = np.einsum("oi,bihw->bohw", module.w0.weight.detach().numpy()[:, :, 0, 0], xn) \
        + module.w0.bias.detach().numpy()[None, :, None, None]
    return module.rate1.item() * global_part + module.rate2.item() * local


@pytest.mark.parametrize("size", [(32, 32), (7, 5), (4, 4), (2, 2)])
def test_frequency_attention_equals_numpy(size):
    torch.manual_seed(0)
    module = FrequencyAttention(3, 4, size).double()
    with torch.no_grad():
        module.rate1.fill_(0.7)
        module.rate2.fill_(-0.3)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    np.testing.assert_allclose(module(x).detach().numpy(), numpy_fam(module, x.numpy()), atol=1e-10)
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


# -- an independent numpy computation of the hierarchy ---------------------------------------------
def np_conv1x1(x, conv):
    out = np.einsum("oi,bihw->bohw", conv.weight.detach().numpy()[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias.detach().numpy()[None, :, None, None]


def np_bn_relu(x, bn):
    """BatchNorm in training mode (batch statistics, biased variance) then ReLU."""
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    y = (x - mean) / np.sqrt(var + bn.eps) * bn.weight.detach().numpy()[None, :, None, None] \
        + bn.bias.detach().numpy()[None, :, None, None]
    return np.maximum(y, 0.0)


def np_nearest(x, size):
    rows = np.arange(size[0]) * x.shape[2] // size[0]
    cols = np.arange(size[1]) * x.shape[3] // size[1]
    return x[:, :, rows][:, :, :, cols]


def np_local_attention(x, y, fusion):
    """Stand-alone 3x3 self-attention, one loop step per window offset: the query from y at p, keys and
    values from x at p + offset (zero outside), relative embeddings by row (first C/2) or column offset."""
    c = x.shape[1]
    q = np_conv1x1(y, fusion.query)
    keys = np.pad(np_conv1x1(x, fusion.key), ((0, 0), (0, 0), (1, 1), (1, 1)))
    values = np.pad(np_conv1x1(x, fusion.value), ((0, 0), (0, 0), (1, 1), (1, 1)))
    rel_h, rel_w = fusion.rel_h.detach().numpy(), fusion.rel_w.detach().numpy()
    h, w = x.shape[-2:]
    logits, windows = [], []
    for i in range(3):
        for j in range(3):
            rel = np.concatenate([rel_h[:, i], rel_w[:, j]])[None, :c, None, None]
            logits.append(q * (keys[:, :, i:i + h, j:j + w] + rel))
            windows.append(values[:, :, i:i + h, j:j + w])
    logits = np.stack(logits)
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    return (weights * np.stack(windows)).sum(axis=0)


def np_sigmoid_fusion(x, y, fusion):
    att = 1.0 / (1.0 + np.exp(-np_conv1x1(np.concatenate([x, y], axis=1), fusion[0])))
    return x * att[:, 0:1] + y * att[:, 1:2]


def np_hierarchy(levels, maps, out_sizes):
    """The fused outputs, shallow level first, from the maps (shallow first) and the level modules
    (deepest first): the level formula of mdistiller/losses/famkd.py written out."""
    outputs, residual = [], None
    for level, x, size in zip(levels, reversed(maps), reversed(out_sizes)):
        if level.input_conv is not None:
            x = np_bn_relu(np_conv1x1(x, level.input_conv[0]), level.input_conv[1])
        if level.fusion is not None:
            if level.residual_conv is not None:
                residual = np_bn_relu(np_conv1x1(residual, level.residual_conv[0]), level.residual_conv[1])
            residual = np_nearest(residual, x.shape[-2:])
            fuse = np_local_attention if isinstance(level.fusion, LocalAttentionFusion) else np_sigmoid_fusion
            x = fuse(x, residual, level.fusion)
        x = np_nearest(x, size)
        outputs.insert(0, np_bn_relu(numpy_fam(level.head[0], x), level.head[1]))
        residual = x
    return outputs


@pytest.mark.parametrize("opts", [[], ["FAMKD.MID_CHANNELS=[8,16,32,32]", "FAMKD.FUSION=abf"],
                                  ["FAMKD.STU_PREACT=True", "FAMKD.POOLED_LOSS=False"]])
def test_loss_equals_a_numpy_computation_of_the_hierarchy(opts):
    # resnet8 -> wrn_16_2 at 8 px: student maps 16@8x8, 32@4x4, 64@2x2 + pooled 64; teacher 32, 64, 128 + 128.
    distiller = build("FAMKD.WARMUP_EPOCHS=4", "FAMKD.FAMKD_WEIGHT=3.0", *opts, size=8).double().train()
    with torch.no_grad():
        for level in distiller.hierarchy:  # BN affine away from (1, 0) so that a dropped term shows
            for bn in [m for m in level.modules() if isinstance(m, nn.BatchNorm2d)]:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
    image, target = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    _, full = distiller(image=image, target=target, epoch=20)
    _, ramped = distiller(image=image, target=target, epoch=1)
    with torch.no_grad():
        _, fs = distiller.student(image)
        _, ft = distiller.teacher(image)
    key = "preact_feats" if "FAMKD.STU_PREACT=True" in opts else "feats"
    maps = [f.numpy() for f in fs[key][1:]] + [fs["pooled_feat"].numpy()[:, :, None, None]]
    targets = [f.numpy() for f in ft["feats"][1:]] + [ft["pooled_feat"].numpy()[:, :, None, None]]
    outputs = np_hierarchy(list(distiller.hierarchy), maps, [t.shape[-2:] for t in targets])
    if "FAMKD.POOLED_LOSS=False" in opts:
        outputs, targets = outputs[:-1], targets[:-1]
    expected = 3.0 * sum(((o - t) ** 2).mean() for o, t in zip(outputs, targets))
    assert full["loss_kd"].item() == pytest.approx(expected, rel=1e-9)
    assert ramped["loss_kd"].item() == pytest.approx(expected / 4, rel=1e-9)
    narrow = "FAMKD.MID_CHANNELS=[8,16,32,32]" in opts
    widths = [8, 16, 32, 32] if narrow else [16, 32, 64, 64]   # default: the student's channels, no input conv
    assert [level.head[0].real_weight.shape[0] for level in reversed(distiller.hierarchy)] == widths
    assert all((level.input_conv is None) != narrow for level in distiller.hierarchy)


def test_local_attention_equals_a_loop_over_windows():
    torch.manual_seed(0)
    fusion = LocalAttentionFusion(6).double()
    x, y = torch.randn(2, 6, 5, 4, dtype=torch.float64), torch.randn(2, 6, 5, 4, dtype=torch.float64)
    np.testing.assert_allclose(fusion(x, y).detach().numpy(), np_local_attention(x.numpy(), y.numpy(), fusion),
                               rtol=1e-10, atol=1e-12)


def test_extra_parameters_of_res32x4_res8x4_as_the_authors_count_them():
    # Widths [64, 128, 256, 256] at the teacher's 32, 16, 8, 1: per level FAM (complex C x C x h x w + 1x1 conv
    # + 2 rates) + BN; three fusions (3 C^2 + 2 x C/2 x 3); residual convs 128 -> 64 and 256 -> 128 (+ BN).
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "famkd", "res32x4_res8x4.yaml"))
    torch.manual_seed(0)
    distiller = distiller_dict["FAMKD"](cifar_model_dict["resnet8x4"][0](num_classes=100),
                                        cifar_model_dict["resnet32x4"][0](num_classes=100), cfg)
    complex_weights = 64 * 64 * 32 * 32 + 128 * 128 * 16 * 16 + 256 * 256 * 8 * 8 + 256 * 256 * 1 * 1
    others = sum(c * c + c + 2 + 2 * c for c in (64, 128, 256, 256)) + sum(3 * c * c + 3 * c for c in (64, 128, 256)) \
        + (128 * 64 + 2 * 64) + (256 * 128 + 2 * 128)
    assert distiller.get_extra_parameters() == complex_weights + others == 13_102_856  # a complex weight once: 13.1 M
    stored = sum(p.numel() for p in distiller.hierarchy.parameters())
    assert stored == 2 * complex_weights + others  # held as real and imaginary parts
    assert all(level.input_conv is None for level in distiller.hierarchy) and cfg.FAMKD.STU_PREACT


def test_gradients_reach_student_and_hierarchy_only():
    distiller = build().train()
    assert {id(p) for p in distiller.get_learnable_parameters()} == \
           {id(p) for m in (distiller.student, distiller.hierarchy) for p in m.parameters()}
    imaginary = sum(p.numel() for name, p in distiller.hierarchy.named_parameters() if name.endswith("imag_weight"))
    assert imaginary > 0
    assert distiller.get_extra_parameters() == sum(p.numel() for p in distiller.hierarchy.parameters()) - imaginary
    _, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=30)
    sum(losses.values()).backward()
    assert all(p.grad is not None for m in (distiller.student, distiller.hierarchy) for p in m.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


@pytest.mark.parametrize("opts, match", [(["FAMKD.MID_CHANNELS=[8,8]"], "needs 4 widths"),
                                         (["FAMKD.FUSION=conv"], "attention, abf"),
                                         (["FAMKD.MID_CHANNELS=[8,8,9,8]"], "even widths")])
def test_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match):
        build(*opts)


AUTHORS_WEIGHTS = {"res56_res20.yaml": 0.8, "res32x4_res8x4.yaml": 20.0, "wrn40_2_wrn_16_2.yaml": 5.0,
                   "wrn40_2_wrn_40_1.yaml": 5.0, "wrn40_2_shuv1.yaml": 5.0}   # the last: their teacher's weight


@pytest.mark.parametrize("pair", SFAKD_PAIRS)
def test_cifar_configs_cover_the_sfakd_pairs_with_the_authors_weights(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "famkd", pair))
    sfakd = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd", pair))
    assert cfg.DISTILLER.TYPE == "FAMKD" and cfg.EXPERIMENT.TAG.startswith("famkd,")
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.LR) == \
           (sfakd.DISTILLER.TEACHER, sfakd.DISTILLER.STUDENT, sfakd.SOLVER.LR)
    assert cfg.FAMKD.FAMKD_WEIGHT == AUTHORS_WEIGHTS.get(pair, 1.0) and cfg.FAMKD.FUSION == "attention"
    assert cfg.FAMKD.STU_PREACT == (pair == "res32x4_res8x4.yaml")


def test_imagenet_configs_load_with_the_authors_widths():
    r34 = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r34_r18", "famkd.yaml"))
    assert (list(r34.FAMKD.MID_CHANNELS), r34.FAMKD.NUM_STAGES, r34.FAMKD.POOLED_LOSS) == \
           ([64, 128, 256, 512, 512], 4, False)
    assert (r34.SOLVER.BATCH_SIZE, r34.SOLVER.LR, r34.FAMKD.WARMUP_EPOCHS) == (128, 0.1, 1)
    r50 = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r50_mv1", "famkd.yaml"))
    assert r50.DISTILLER.TYPE == "FAMKD" and r50.DATASET.TYPE == "imagenet"
