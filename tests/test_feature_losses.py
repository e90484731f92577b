"""The feature / relation losses against hand-worked cases and independent numpy / scipy versions."""

import math

import pytest
import torch

import feature_reference as ref
from mdistiller.losses import (ConnectorConvBN, ConvReg, at_loss, kdsvd_loss, nst_loss, ofd_loss, ofd_margin, pkt_loss,
                               rkd_loss, sp_loss, vid_loss, vid_regressor)
from mdistiller.losses.ofd import partial_l2
from mdistiller.losses.vid import initial_log_scale


def randn(*shape, seed=0, relu=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.clamp(min=0) if relu else x


# -- AT ------------------------------------------------------------------------------------------
def test_at_hand_worked():
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    # maps e1 and e2, already unit: difference (1, -1, 0, 0), mean of squares 2 / 4
    assert at_loss([f_s], [f_t], 2).item() == pytest.approx(0.5)
    assert at_loss([f_s], [f_s], 2).item() == 0.0


@pytest.mark.parametrize("p", [1, 2, 4])
def test_at_matches_reference_with_pooling(p):
    g_s = [randn(3, 4, 8, 8, seed=1, relu=True), randn(3, 6, 4, 4, seed=2, relu=True)]
    g_t = [randn(3, 5, 4, 4, seed=3, relu=True), randn(3, 7, 8, 8, seed=4, relu=True)]  # sizes swap: both directions
    assert at_loss(g_s, g_t, p).item() == pytest.approx(ref.at(g_s, g_t, p), rel=1e-10)


# -- NST -----------------------------------------------------------------------------------------
def test_nst_hand_worked():
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # one channel each: 1 + 1 - 2 cos^2 with cos^2 = 1/2
    assert nst_loss([f_s], [f_t]).item() == pytest.approx(1.0)
    assert nst_loss([f_t], [f_t]).item() == pytest.approx(0.0, abs=1e-7)


def test_nst_matches_reference():
    g_s = [randn(2, 3, 8, 8, seed=5), randn(2, 4, 2, 2, seed=6)]
    g_t = [randn(2, 5, 4, 4, seed=7), randn(2, 6, 4, 4, seed=8)]
    assert nst_loss(g_s, g_t).item() == pytest.approx(ref.nst(g_s, g_t), rel=1e-10)


# -- SP ------------------------------------------------------------------------------------------
def test_sp_hand_worked():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    # G_s = I; G_t rows (1, 1) / sqrt 2; ||.||_F^2 = 2 (2 - sqrt 2), over b^2 = 4
    assert sp_loss([f_s], [f_t]).item() == pytest.approx(1 - math.sqrt(2) / 2)


def test_sp_matches_reference():
    f_s, f_t = randn(5, 3, 4, 4, seed=9), randn(5, 8, 2, 2, seed=10)
    assert sp_loss([f_s], [f_t]).item() == pytest.approx(ref.sp(f_s, f_t), rel=1e-10)


# -- PKT -----------------------------------------------------------------------------------------
def test_pkt_matches_reference_and_vanishes_on_equal_similarities():
    f_s, f_t = randn(6, 10, seed=11), randn(6, 20, seed=12)
    assert pkt_loss(f_s, f_t).item() == pytest.approx(ref.pkt(f_s, f_t), rel=1e-9)
    assert pkt_loss(3 * f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)  # cosine is scale-free


def test_pkt_zero_vector_is_not_nan():
    f = randn(4, 5, seed=13)
    f[0] = 0
    assert torch.isfinite(pkt_loss(f, randn(4, 5, seed=14)))


# -- RKD -----------------------------------------------------------------------------------------
def test_rkd_matches_reference():
    f_s, f_t = randn(5, 7, seed=15), randn(5, 9, seed=16)
    assert rkd_loss(f_s, f_t).item() == pytest.approx(ref.rkd(f_s, f_t), rel=1e-9)
    assert rkd_loss(f_s, f_t, distance_weight=1, angle_weight=0).item() == pytest.approx(
        ref.rkd(f_s, f_t, 1, 0), rel=1e-9)


def test_rkd_invariant_to_scale_rotation_and_translation():
    f_t = randn(6, 4, seed=17)
    q, _ = torch.linalg.qr(randn(4, 4, seed=18))
    assert rkd_loss(2.5 * f_t @ q + 1.0, f_t).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_loss(randn(6, 4, seed=19), f_t).item() > 0.1


def test_rkd_squared_distances():
    f_s, f_t = randn(4, 3, seed=20), randn(4, 3, seed=21)
    d_s = torch.cdist(f_s, f_s) ** 2
    d_t = torch.cdist(f_t, f_t) ** 2
    off = ~torch.eye(4, dtype=torch.bool)
    expected = torch.nn.functional.smooth_l1_loss(d_s / d_s[off].mean(), d_t / d_t[off].mean())
    got = rkd_loss(f_s, f_t, squared=True, distance_weight=1, angle_weight=0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


# -- KDSVD ---------------------------------------------------------------------------------------
def torch_right_vectors(f: torch.Tensor) -> torch.Tensor:
    """torch's (LAPACK's) right singular vectors of the (C*H, W) view: only their signs are used."""
    b, c, h, w = f.shape
    return torch.linalg.svd(f.reshape(b, c * h, w), full_matrices=False)[2].transpose(1, 2)


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_numpy_svd_reference(k):
    g_s = [randn(3, 4, 8, 8, seed=22), randn(3, 4, 4, 4, seed=23), randn(3, 8, 2, 2, seed=24)]
    g_t = [randn(3, 6, 8, 8, seed=25), randn(3, 2, 8, 8, seed=26), randn(3, 3, 2, 2, seed=27)]
    pooled_t = [g_t[0], torch.nn.functional.avg_pool2d(g_t[1], 2), g_t[2]]  # stage 1: the teacher is pooled
    gauge = [torch_right_vectors(f.float()) for f in pooled_t]
    got = kdsvd_loss([f.float() for f in g_s], [f.float() for f in g_t], k).item()
    assert got == pytest.approx(ref.kdsvd(g_s, g_t, k, teacher_gauge=gauge), rel=1e-4)


def test_kdsvd_vanishes_when_student_equals_teacher():
    g = [randn(2, 3, 8, 8, seed=28).float(), randn(2, 5, 4, 4, seed=29).float()]
    assert kdsvd_loss(g, g, 1).item() == pytest.approx(0.0, abs=1e-10)
    assert kdsvd_loss(g, [-f for f in g], 1).item() == pytest.approx(0.0, abs=1e-10)  # signs are aligned


# -- OFD -----------------------------------------------------------------------------------------
def test_ofd_margin_is_the_truncated_normal_mean():
    weight = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.1, 1.0])
    bias = torch.tensor([0.0, 0.2, -1.0, 0.5, 0.5, 3.5])  # the last two have P(x < 0) < 0.001
    expected = [ref.ofd_margin(w, b) for w, b in zip(weight.tolist(), bias.tolist())]
    assert expected[-2:] == pytest.approx([-0.3, -3.0])
    assert ofd_margin(weight, bias).tolist() == pytest.approx(expected, rel=1e-6)
    # zero-mean unit Gaussian: E[x | x < 0] = -sqrt(2 / pi)
    assert ofd_margin(torch.ones(1), torch.zeros(1)).item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)


@pytest.mark.parametrize("s, t, m, expected", [
    (2.0, -1.0, -0.5, 6.25),   # teacher below margin, student above: pulled to the margin
    (-2.0, -1.0, -0.5, 0.0),   # both below the margin: free
    (0.5, 1.0, -0.5, 0.25),    # positive teacher: plain L2
    (1.5, 1.0, -0.5, 0.25),
    (-0.8, -0.3, -0.5, 0.0),   # teacher between margin and 0, student below it: free
    (-0.1, -0.3, -0.5, 0.04),  # ... student above it: L2
])
def test_partial_l2_hand_worked(s, t, m, expected):
    got = partial_l2(torch.tensor([[[[s]]]]), torch.tensor([[[[t]]]]), torch.tensor([m]).view(1, 1, 1, 1))
    assert got.item() == pytest.approx(expected)


def test_ofd_loss_matches_reference_with_stage_weights_and_pooling():
    g_s = [randn(2, 3, 4, 4, seed=30), randn(2, 4, 2, 2, seed=31), randn(2, 5, 2, 2, seed=32)]
    g_t = [randn(2, 3, 8, 8, seed=33), randn(2, 4, 2, 2, seed=34), randn(2, 5, 4, 4, seed=35)]
    margins = [-torch.rand(c, dtype=torch.float64, generator=torch.Generator().manual_seed(c)) for c in (3, 4, 5)]
    expected = sum(ref.partial_l2(f_s, ref.block_mean(ref.as_np(f_t), f_s.shape[2]), m) * w
                   for f_s, f_t, m, w in zip(g_s, g_t, margins, (0.25, 0.5, 1.0)))
    assert ofd_loss(g_s, g_t, margins).item() == pytest.approx(expected, rel=1e-6)


def test_ofd_connectors_names_and_init():
    connectors = ConnectorConvBN([16, 32], [64, 128], kernel_size=3)
    names = {name: tuple(p.shape) for name, p in connectors.state_dict().items()}
    assert names["connectors.0.0.weight"] == (64, 16, 3, 3) and names["connectors.1.1.running_var"] == (128,)
    out = connectors([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])
    assert [tuple(o.shape) for o in out] == [(2, 64, 8, 8), (2, 128, 4, 4)]  # "same" padding
    weight = ConnectorConvBN([256], [512]).connectors[0][0].weight
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / 512), rel=0.05)


# -- VID -----------------------------------------------------------------------------------------
def test_vid_initial_variance_and_nll_against_scipy():
    log_scale = initial_log_scale(4, 5.0, 1e-5)
    assert (torch.nn.functional.softplus(log_scale) + 1e-5).tolist() == pytest.approx([5.0] * 4, rel=1e-6)
    mean, target = randn(2, 4, 3, 3, seed=36), randn(2, 4, 3, 3, seed=37)
    log_scale = randn(4, seed=38)
    variance = torch.nn.functional.softplus(log_scale) + 1e-5
    assert vid_loss(mean, target, log_scale, 1e-5).item() == pytest.approx(ref.vid_nll(mean, target, variance), rel=1e-6)


def test_vid_regressor_layout():
    regressor = vid_regressor(16, 32)
    assert [tuple(p.shape) for p in regressor.state_dict().values()] == [(32, 16, 1, 1), (32, 32, 1, 1), (32, 32, 1, 1)]
    assert list(regressor.state_dict()) == ["0.weight", "2.weight", "4.weight"]
    assert isinstance(regressor[1], torch.nn.ReLU) and isinstance(regressor[3], torch.nn.ReLU)


# -- FitNet ConvReg ------------------------------------------------------------------------------
@pytest.mark.parametrize("s_shape, t_shape, layer, kernel", [
    ((1, 8, 16, 16), (1, 12, 8, 8), torch.nn.Conv2d, (3, 3)),
    ((1, 8, 8, 8), (1, 12, 16, 16), torch.nn.ConvTranspose2d, (4, 4)),
    ((1, 8, 8, 8), (1, 12, 8, 8), torch.nn.Conv2d, (1, 1)),
    ((1, 8, 8, 8), (1, 12, 6, 6), torch.nn.Conv2d, (3, 3)),
])
def test_convreg_by_size_ratio(s_shape, t_shape, layer, kernel):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is layer and reg.conv.kernel_size == kernel
    out = reg(torch.randn(2, *s_shape[1:]))
    assert out.shape[1:] == t_shape[1:] and (out >= 0).all()
    assert set(reg.state_dict()) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                     "bn.running_var", "bn.num_batches_tracked"}


def test_convreg_refuses_a_much_smaller_student():
    with pytest.raises(ValueError, match="HINT_LAYER"):
        ConvReg((1, 8, 4, 4), (1, 8, 16, 16))


# -- mixed precision -----------------------------------------------------------------------------
def test_losses_run_in_float32_under_autocast():
    f_s, f_t = randn(6, 10, seed=39).float(), randn(6, 12, seed=40).float()
    full = pkt_loss(f_s, f_t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = pkt_loss(f_s, f_t)
        bf16_mm = (f_s @ f_s.t()).dtype
    assert bf16_mm == torch.bfloat16  # autocast is really on...
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(full.item(), rel=1e-6)  # ...yet no loss
