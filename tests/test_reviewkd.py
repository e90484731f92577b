"""ReviewKD: HCL against a direct formula, ABF fusion, ReviewFusion on its own, the distiller."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_step import build, train_step
from mdistiller.errors import ConfigError
from mdistiller.losses.reviewkd import ABF, ReviewFusion, hcl_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def block_mean(a: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def reference_hcl(fs_list, ft_list) -> float:
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[2]
        terms = [(1.0, np.mean((fs - ft) ** 2))]
        pooled_sizes = [s for s in (4, 2, 1) if s < h]
        for i, s in enumerate(pooled_sizes):
            terms.append((0.5 ** (i + 1), np.mean((block_mean(fs, s) - block_mean(ft, s)) ** 2)))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


def test_hcl_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    sizes = [(3, 5, 8, 8), (3, 6, 4, 4), (3, 7, 2, 2), (3, 9, 1, 1)]
    fs = [torch.randn(*s, generator=g, dtype=torch.float64) for s in sizes]
    ft = [torch.randn(*s, generator=g, dtype=torch.float64) for s in sizes]
    want = reference_hcl([a.numpy() for a in fs], [a.numpy() for a in ft])
    assert hcl_loss(fs, ft).item() == pytest.approx(want, rel=1e-10)
    assert hcl_loss(ft, ft).item() == 0.0


def test_abf_fuses_with_attention_and_resizes():
    torch.manual_seed(0)
    abf = ABF(4, 6, 5, fuse=True).eval()
    x, residual = torch.randn(2, 4, 4, 4), torch.randn(2, 6, 2, 2)
    out, fused = abf(x, residual, out_size=8)
    with torch.no_grad():
        x1 = abf.conv1(x)
        up = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)   # nearest 2x
        att = torch.sigmoid(F.conv2d(torch.cat([x1, up], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
        mixed = x1 * att[:, :1] + up * att[:, 1:]
        mixed = mixed.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(fused, mixed, atol=1e-6)
    assert torch.allclose(out, abf.conv2(mixed), atol=1e-6)
    assert out.shape == (2, 5, 8, 8)
    assert ABF(4, 6, 5, fuse=False).att_conv is None


def test_review_fusion_standalone_shapes_and_key_order():
    fusion = ReviewFusion([8, 16, 32, 32], 32, [10, 20, 40, 40], [16, 8, 4, (1, 1)])
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2), torch.randn(2, 32, 1, 1)]
    outs = fusion(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 10, 16, 16), (2, 20, 8, 8), (2, 40, 4, 4), (2, 40, 1, 1)]
    keys = set(fusion.state_dict())
    assert "0.att_conv.0.weight" not in keys and {f"{i}.att_conv.0.weight" for i in (1, 2, 3)} <= keys
    assert fusion[0].conv1[0].in_channels == 32 and fusion[3].conv1[0].in_channels == 8
    with pytest.raises(ValueError, match="4 levels got 3"):
        fusion(feats[1:])


def test_reviewkd_distiller_step_warmup_and_loss():
    distiller, cfg = build("REVIEWKD", ["REVIEWKD.REVIEWKD_WEIGHT=2.0", "REVIEWKD.WARMUP_EPOCHS=4"])
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, losses = train_step(distiller, dict(image=image, target=target, epoch=2))
    distiller.zero_grad()
    with torch.no_grad():
        _, fs = distiller.student(image)
        _, ft = distiller.teacher(image)
        fused = distiller.abfs(fs["feats"][1:] + [fs["pooled_feat"][:, :, None, None]])
        teacher_levels = ft["preact_feats"][1:] + [ft["pooled_feat"][:, :, None, None]]
    want = 2.0 * 0.5 * reference_hcl([a.double().numpy() for a in fused], [a.double().numpy() for a in teacher_levels])
    assert losses["loss_kd"].item() == pytest.approx(want, rel=1e-4)
    # resnet8 -> wrn_16_2 at 16 px: stages (16@16, 32@8, 64@4) + pooled 64; teacher (32, 64, 128) + 128
    assert [abf.conv1[0].in_channels for abf in distiller.abfs] == [64, 64, 32, 16]
    assert [abf.conv2[0].out_channels for abf in distiller.abfs] == [128, 128, 64, 32]
    assert all(abf.conv1[0].out_channels == 64 for abf in distiller.abfs)   # min(512, 64)
    assert distiller.get_extra_parameters() == sum(p.numel() for p in distiller.abfs.parameters())


def test_reviewkd_state_dict_keys_follow_mdistiller():
    distiller, _ = build("REVIEWKD", student="resnet8x4", teacher="resnet32x4", num_classes=100, size=32)
    keys = {k for k in distiller.state_dict() if k.startswith("abfs.")}
    per_block = {"conv1.0.weight", "conv2.0.weight"} | {f"conv{i}.1.{n}" for i in (1, 2) for n in
                                                         ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked")}
    want = {f"abfs.{i}.{k}" for i in range(4) for k in per_block}
    want |= {f"abfs.{i}.att_conv.0.{n}" for i in (1, 2, 3) for n in ("weight", "bias")}
    assert keys == want
    # MDistiller's defaults describe exactly this pair at 32 px: in 256 -> out 256 at the deepest level
    assert distiller.abfs[0].conv1[0].weight.shape == (256, 256, 1, 1)
    assert distiller.abfs[3].conv2[0].weight.shape == (64, 256, 3, 3)


def test_reviewkd_config_values_are_checked_against_the_models():
    build("REVIEWKD", ["REVIEWKD.IN_CHANNELS=[16, 32, 64, 64]", "REVIEWKD.SHAPES=[1, 4, 8, 16]",
                       "REVIEWKD.OUT_SHAPES=[1, 4, 8, 16]", "REVIEWKD.OUT_CHANNELS=[32, 64, 128, 128]"])
    with pytest.raises(ConfigError, match=r"REVIEWKD.SHAPES is \[1, 8, 16, 33\].*give \[1, 4, 8, 16\]"):
        build("REVIEWKD", ["REVIEWKD.SHAPES=[1, 8, 16, 33]"])


def test_reviewkd_student_preact_and_uneven_depths():
    """vgg8 has four stages after the stem, resnet8 three: the deepest three pair up."""
    distiller, _ = build("REVIEWKD", ["REVIEWKD.STU_PREACT=True"], student="vgg8", teacher="resnet20")
    assert len(distiller.abfs) == 4
    image, target = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    train_step(distiller, dict(image=image, target=target, epoch=30))
