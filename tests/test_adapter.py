"""The feature adapter: timm and torchvision models behind the (logits, feats) contract.

References are computed independently of the adapter: the wrapped model's own forward, its raw
block / stage outputs captured with a hook and reshaped with numpy, and hand-worked index lists.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mdistiller.errors import IncompatibleModelError, UnknownNameError
from mdistiller.models.adapter import evenly_spaced, is_channels_last, tokens_to_map
from mdistiller.models.external import build_external_model, is_external_name

TINY_VIT = dict(patch_size=4, embed_dim=48, depth=4, num_heads=3)
TINY_SWIN = dict(window_size=2, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


def raw_outputs(model: nn.Module, paths, x):
    """The outputs of the named modules of `model` on `x`, captured with plain forward hooks."""
    captured = {}
    modules = dict(model.named_modules())
    handles = [modules[p].register_forward_hook(lambda m, a, out, p=p: captured.__setitem__(p, out))
               for p in paths]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [captured[p] for p in paths]


def test_evenly_spaced_hand_worked():
    assert evenly_spaced(12) == [2, 5, 8, 11]
    assert evenly_spaced(4) == [0, 1, 2, 3]
    assert evenly_spaced(3) == [0, 1, 2]
    assert evenly_spaced(24) == [5, 11, 17, 23]


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_tokens_to_map_drops_prefix_and_reads_row_major(prefix):
    b, side, c = 2, 3, 5
    tokens = torch.randn(b, prefix + side * side, c)
    expected = np.transpose(tokens.numpy()[:, prefix:, :].reshape(b, side, side, c), (0, 3, 1, 2))
    np.testing.assert_array_equal(tokens_to_map(tokens, prefix).numpy(), expected)
    np.testing.assert_array_equal(tokens_to_map(tokens).numpy(), expected)  # prefix inferred
    # token (row r, column q) lands at map position [:, :, r, q]
    r, q = 1, 2
    assert torch.equal(tokens_to_map(tokens, prefix)[:, :, r, q], tokens[:, prefix + r * side + q, :])


def test_tokens_to_map_refuses_a_non_square_grid():
    with pytest.raises(IncompatibleModelError, match="square grid"):
        tokens_to_map(torch.randn(1, 1 + 12, 4), 1)


@pytest.mark.parametrize("name,kwargs,prefix", [
    ("timm:vit_tiny_patch16_224", TINY_VIT, 1),
    ("timm:deit_tiny_distilled_patch16_224", TINY_VIT, 2),
])
def test_timm_vit_taps_logits_and_pooled(name, kwargs, prefix):
    torch.manual_seed(0)
    model = build_external_model(name, num_classes=7, image_size=32, kwargs=kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x)
    inner = model.model
    with torch.no_grad():
        reference_logits = inner(x)
        tokens = inner.forward_features(x)
    torch.testing.assert_close(logits, reference_logits)
    assert logits.shape == (2, 7)
    # pooled: the class token (plus the distillation token, averaged, for DeiT distilled) after the norm
    pooled = tokens[:, 0] if prefix == 1 else (tokens[:, 0] + tokens[:, 1]) / 2
    torch.testing.assert_close(feats["pooled_feat"], pooled)
    # four blocks of four, raw outputs with the prefix tokens removed, 8x8 grid (32 / patch 4)
    blocks = raw_outputs(inner, [f"blocks.{i}" for i in range(4)], x)
    assert len(feats["feats"]) == 4
    for tap, block in zip(feats["feats"], blocks):
        expected = np.transpose(block.numpy()[:, prefix:, :].reshape(2, 8, 8, 48), (0, 3, 1, 2))
        np.testing.assert_allclose(tap.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    for tokens_of_prefix, block in zip(feats["prefix"], blocks):  # the removed tokens, kept apart
        np.testing.assert_allclose(tokens_of_prefix.detach().numpy(), block.numpy()[:, :prefix, :], rtol=1e-5, atol=1e-6)
    assert model.get_stage_channels() == [48, 48, 48, 48]
    assert model.kind == "token"


def test_timm_swin_maps_are_nchw_stage_outputs():
    torch.manual_seed(0)
    model = build_external_model("timm:swin_tiny_patch4_window7_224", 5, 32, TINY_SWIN).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x)
    stages = raw_outputs(model.model, [f"layers.{i}" for i in range(4)], x)  # timm Swin stages: NHWC
    for tap, stage in zip(feats["feats"], stages):
        np.testing.assert_allclose(tap.detach().numpy(), np.transpose(stage.numpy(), (0, 3, 1, 2)),
                                   rtol=1e-5, atol=1e-6)
    assert [f.shape[-1] for f in feats["feats"]] == [8, 4, 2, 1]
    assert model.get_stage_channels() == [24, 48, 96, 192]
    torch.testing.assert_close(logits, model.model(x))


def test_timm_cnn_keeps_every_stage_and_learns_through_the_taps():
    torch.manual_seed(0)
    model = build_external_model("timm:convnext_atto", 10, 32,
                                 dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)))
    assert model.kind == "cnn" and model.get_stage_channels() == [16, 32, 64, 128]
    logits, feats = model(torch.randn(2, 3, 32, 32))
    feats["feats"][1].sum().backward()
    stage0 = [p.grad for p in model.model.stages[0].parameters()]
    stage3 = [p.grad for p in model.model.stages[3].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in stage0)  # before the tap: reached
    assert all(g is None for g in stage3)  # after the tap: not part of this loss


def test_torchvision_resnet_taps_equal_its_layers():
    torch.manual_seed(0)
    model = build_external_model("torchvision:resnet18", 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x)
    net = model.model
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = layer(h)
            expected.append(h)
        pooled = torch.flatten(net.avgpool(h), 1)
    for tap, ref in zip(feats["feats"], expected):
        torch.testing.assert_close(tap, ref)
    torch.testing.assert_close(feats["pooled_feat"], pooled)
    torch.testing.assert_close(logits, net.fc(pooled))
    assert model.get_stage_channels() == [64, 128, 256, 512]
    # no hook outlives a call, so a copy (the fast teacher, an EMA) gives its own maps
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.model.layer4[-1].bn2.bias.add_(1.0)
    torch.testing.assert_close(model(x)[1]["feats"][3], expected[3])
    assert not torch.allclose(copied(x)[1]["feats"][3], expected[3])


@pytest.mark.slow
def test_torchvision_swin_and_vit_taps():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    swin = build_external_model("torchvision:swin_t", 10, 32).eval()
    _, feats = swin(x)
    stages = raw_outputs(swin.model, ["features.1", "features.3", "features.5", "features.7"], x)
    for tap, stage in zip(feats["feats"], stages):
        torch.testing.assert_close(tap, stage.permute(0, 3, 1, 2))
    vit = build_external_model("torchvision:vit_b_16", 10, 32).eval()
    _, feats = vit(x)
    layers = raw_outputs(vit.model, [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)], x)
    for tap, layer in zip(feats["feats"], layers):  # 32 / 16 = 2x2 grid after the class token
        expected = np.transpose(layer.numpy()[:, 1:, :].reshape(1, 2, 2, 768), (0, 3, 1, 2))
        np.testing.assert_allclose(tap.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    for prefix, layer in zip(feats["prefix"], layers):  # the class token, split off each tap
        np.testing.assert_allclose(prefix.detach().numpy(), layer.numpy()[:, :1, :], rtol=1e-5, atol=1e-5)
    assert vit.kind == "token" and swin.kind == "token" and "prefix" not in swin(x)[1]


def test_a_hierarchical_timm_model_gives_its_four_stages():
    model = build_external_model("timm:resnet10t", 10, 32, dict(stem_width=8, channels=(16, 32, 64, 128))).eval()
    x = torch.randn(2, 3, 32, 32)
    _, feats = model(x)
    layers = raw_outputs(model.model, ["layer1", "layer2", "layer3", "layer4"], x)  # the stem tap left out
    for tap, layer in zip(feats["feats"], layers):
        torch.testing.assert_close(tap, layer)
    assert model.get_stage_channels() == [16, 32, 64, 128] and model.kind == "cnn"


def test_feature_modules_by_name_and_an_unknown_module():
    model = build_external_model("timm:resnet10t", 10, 32, dict(stem_width=8, channels=(16, 32, 64, 128)),
                                 feature_modules=["layer2", "layer4"])
    _, feats = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats["feats"]] == [(32, 4, 4), (128, 1, 1)]
    with pytest.raises(IncompatibleModelError, match="has no module layer9"):
        build_external_model("torchvision:resnet18", 10, 32, feature_modules=["layer9"])


def test_unknown_names_suggest_the_library_names():
    with pytest.raises(UnknownNameError, match="Did you mean timm:vit_tiny_patch16_224"):
        build_external_model("timm:vit_tiny_patch16_22", 10, 32)
    with pytest.raises(UnknownNameError, match="torchvision:resnet18"):
        build_external_model("torchvision:resnet19", 10, 32)
    assert is_external_name("timm:resnet18") and not is_external_name("resnet8x4")


def test_what_a_foreign_model_cannot_give_is_refused_by_name():
    model = build_external_model("timm:vit_tiny_patch16_224", 10, 32, TINY_VIT)
    with pytest.raises(IncompatibleModelError, match="timm:vit_tiny_patch16_224 has no BatchNorm"):
        model.get_bn_before_relu()
    _, feats = model(torch.randn(2, 3, 32, 32))
    assert "preact_feats" not in feats


@pytest.mark.usefixtures("torch_single_thread")
def test_a_timm_mixer_follows_the_image_size():
    """timm's MLP-Mixer family names its patch embedding `stem` and fixes its token count at
    construction: built for 224 px, it is rebuilt for the data's size (gMLP-Ti/16 at 32 px: 2x2 tokens)."""
    model = build_external_model("timm:gmlp_ti16_224", 10, 32)
    logits, feats = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and model.model.stem.img_size == (32, 32)
    assert [tuple(f.shape) for f in feats["feats"]] == [(2, 128, 2, 2)] * 4


def test_channels_last_is_read_from_a_square_grid_and_the_hint_only_where_ambiguous():
    assert is_channels_last((2, 8, 8, 24)) and not is_channels_last((2, 24, 8, 8))
    assert is_channels_last((2, 1, 1, 64), hint=False) and not is_channels_last((2, 64, 1, 1), hint=True)
    assert is_channels_last((2, 8, 8, 8), hint=True) and not is_channels_last((2, 8, 8, 8), hint=False)


SWIN_KWARGS = dict(window_size=2, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def test_named_swin_taps_are_detected_as_channels_last():
    """timm's Swin stages give (N, H, W, C); hooked by name they come out NCHW with Swin's widths."""
    model = build_external_model("timm:swin_tiny_patch4_window7_224", 10, 32, SWIN_KWARGS,
                                 feature_modules=[f"layers.{i}" for i in range(4)])
    assert model.get_stage_channels() == [8, 16, 32, 64]
    image = torch.randn(2, 3, 32, 32)
    _, feats = model(image)
    with torch.no_grad():
        x = model.model.patch_embed(image)
        x = model.model.layers[0](x)
    torch.testing.assert_close(feats["feats"][0], x.permute(0, 3, 1, 2))
    assert [tuple(f.shape[2:]) for f in feats["feats"]] == [(8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("name,kwargs,size,shapes", [
    ("timm:cait_xxs24_224", dict(patch_size=4, embed_dim=16, depth=2, depth_token_only=1, num_heads=2), 32,
     [(16, 8, 8), (16, 8, 8)]),
    ("timm:xcit_nano_12_p16_224", dict(patch_size=8, embed_dim=16, depth=2, num_heads=2, cls_attn_layers=1), 32,
     [(16, 4, 4), (16, 4, 4)]),
    ("timm:levit_128s", dict(embed_dim=(16, 24, 32), key_dim=8, num_heads=(1, 1, 1), depth=(1, 1, 1)), 64,
     [(16, 4, 4), (24, 2, 2), (32, 1, 1)]),
])
def test_cait_xcit_and_levit_give_maps_and_logits(name, kwargs, size, shapes):
    """CaiT / XCiT join their class token after the tapped blocks (no prefix taps); LeViT's attention
    biases follow img_size and its distilled heads are averaged on the pooled vector."""
    model = build_external_model(name, 10, size, kwargs)
    logits, feats = model(torch.randn(2, 3, size, size))
    assert [tuple(f.shape[1:]) for f in feats["feats"]] == shapes
    assert logits.shape == (2, 10) and "prefix" not in feats


def test_a_model_that_cannot_run_at_the_size_is_refused_in_one_line():
    with pytest.raises(IncompatibleModelError, match="does not run at 64 px.*DATASET.IMAGE_SIZE to 224") as refused:
        build_external_model("timm:efficientformer_l1", 10, 64,
                             dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_vit=1))
    assert "\n" not in str(refused.value)
