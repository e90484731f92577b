"""CIFAR / Tiny-ImageNet model zoo: feature contract, MDistiller state-dict parity, registry."""

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.errors import UnknownNameError
from mdistiller.models.cifar import (
    CIFAR_TEACHER_DIR,
    cifar_model_dict,
    cifar_models,
    tiny_imagenet_model_dict,
    tiny_imagenet_models,
)
from mdistiller.models.cifar._common import channel_shuffle

FIXTURE = Path(__file__).parent / "fixtures" / "mdistiller_cifar_state_keys.json"
TINY_MV2 = "tiny_imagenet/MobileNetV2"
CONSTRUCTORS = {name: fn for name, (fn, _) in cifar_model_dict.items()}
CONSTRUCTORS[TINY_MV2] = tiny_imagenet_model_dict["MobileNetV2"][0]
NAMES = list(CONSTRUCTORS)
WRNS = {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}

# Entries of feats that are not rectified, following MDistiller's choice of features: the WRNs are
# pre-activation networks (raw stem conv, residual streams), MobileNetV2 stages end in linear
# bottlenecks.
UNRECTIFIED = {name: range(4) for name in WRNS}
UNRECTIFIED["MobileNetV2"] = range(1, 5)
UNRECTIFIED[TINY_MV2] = range(1, 4)

# Parameter counts (millions, 100 classes) as usually quoted for these CIFAR-100 models.
PUBLISHED_PARAMS_M = {"resnet8x4": 1.23, "resnet32x4": 7.43}


@pytest.fixture(scope="module")
def models() -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: fn(num_classes=100).eval() for name, fn in CONSTRUCTORS.items()}


@pytest.fixture(scope="module")
def outputs(models) -> Dict[Tuple[str, int], tuple]:
    """(name, input size) -> (input, logits, feats) for 32x32 and 16x16 inputs."""
    torch.manual_seed(1)
    result = {}
    with torch.no_grad():
        for size in (32, 16):
            x = torch.randn(2, 3, size, size)
            for name, model in models.items():
                logits, feats = model(x)
                result[name, size] = (x, logits, feats)
    return result


@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("name", NAMES)
def test_feature_contract(models, outputs, name, size):
    model = models[name]
    _, logits, feats = outputs[name, size]
    channels = model.get_stage_channels()
    assert logits.shape == (2, 100)
    assert set(feats) == {"feats", "preact_feats", "pooled_feat"}
    assert len(feats["feats"]) == len(feats["preact_feats"]) == len(channels)
    for f, p, c in zip(feats["feats"], feats["preact_feats"], channels):
        assert f.dim() == 4 and f.shape[:2] == (2, c) and min(f.shape[2:]) >= 1
        assert p.shape == f.shape
    assert feats["preact_feats"][0] is feats["feats"][0]
    pooled = feats["pooled_feat"]
    assert pooled.dim() == 2 and pooled.shape[0] == 2
    assert torch.allclose(pooled, F.adaptive_avg_pool2d(_last_map(model, feats), 1).flatten(1), atol=1e-5)
    assert torch.isfinite(logits).all()


def _last_map(model: nn.Module, feats) -> torch.Tensor:
    """The map the classifier pools: the last feature, or the head conv applied to it."""
    last = feats["feats"][-1]
    name = type(model).__name__
    if name == "MobileNetV2":
        return model.conv2(last)
    if name == "ShuffleNetV2":
        return F.relu(model.bn2(model.conv2(last)))
    if name == "WideResNet":
        return F.relu(feats["preact_feats"][-1])
    return last


@pytest.mark.parametrize("name", NAMES)
def test_feats_are_rectified_preacts(models, outputs, name):
    model = models[name]
    _, _, feats = outputs[name, 32]
    skip = UNRECTIFIED.get(name, ())
    for i, f in enumerate(feats["feats"]):
        if i not in skip:
            assert (f >= 0).all(), f"{name} feats[{i}] should be post-ReLU"
    pairs = list(zip(feats["feats"], feats["preact_feats"]))[1:]
    bns = model.get_bn_before_relu()
    for i, (f, p) in enumerate(pairs, start=1):
        if name in WRNS:
            expected = bns[i - 1](f)  # the BN the next ReLU consumes
            assert torch.allclose(p, expected, atol=1e-5)
        elif name == "MobileNetV2" or (name == TINY_MV2 and i < 4):
            assert p is f  # linear bottleneck: nothing to rectify
        elif name == TINY_MV2:
            assert torch.equal(f, F.relu6(p))
        elif name == "ShuffleV2":
            assert torch.equal(f, channel_shuffle(F.relu(p), 2))  # MDistiller's preact is unshuffled
        else:
            assert torch.equal(f, F.relu(p))


@pytest.mark.parametrize("name", NAMES)
def test_bn_before_relu(models, name):
    model = models[name]
    bns = model.get_bn_before_relu()
    channels = model.get_stage_channels()[1:]
    own = {id(m) for m in model.modules()}
    assert len(bns) == len(channels)
    for bn, c in zip(bns, channels):
        assert isinstance(bn, nn.BatchNorm2d) and id(bn) in own
        # ShuffleV2: the BN covers the transformed half of the stage; the other half passes through.
        assert bn.num_features == (c // 2 if name == "ShuffleV2" else c)


def test_state_dict_keys_match_mdistiller(models):
    expected = json.loads(FIXTURE.read_text())
    assert set(expected) == set(NAMES)
    for name, keys in expected.items():
        ours = [[k, list(v.shape)] for k, v in models[name].state_dict().items()]
        assert ours == keys, name


@pytest.mark.parametrize("name, millions", PUBLISHED_PARAMS_M.items())
def test_parameter_count(models, name, millions):
    count = sum(p.numel() for p in models[name].parameters())
    assert count == pytest.approx(millions * 1e6, rel=0.01)


@pytest.mark.parametrize("name", NAMES)
def test_strict_state_dict_round_trip(models, outputs, tmp_path, name):
    path = tmp_path / "model.pth"
    torch.save(models[name].state_dict(), path)
    fresh = CONSTRUCTORS[name](num_classes=100)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    fresh.eval()
    x, logits, feats = outputs[name, 16]
    with torch.no_grad():
        logits2, feats2 = fresh(x)
    assert torch.equal(logits, logits2)
    assert all(torch.equal(a, b) for a, b in zip(feats["feats"], feats2["feats"]))
    assert all(torch.equal(a, b) for a, b in zip(feats["preact_feats"], feats2["preact_feats"]))
    assert torch.equal(feats["pooled_feat"], feats2["pooled_feat"])


def test_small_inputs():
    with torch.no_grad():
        for name in ("resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18"):
            logits, feats = CONSTRUCTORS[name](num_classes=10).eval()(torch.randn(1, 3, 8, 8))
            assert logits.shape == (1, 10) and feats["pooled_feat"].shape[0] == 1


def test_vgg_pools_once_more_on_tiny_imagenet():
    with torch.no_grad():
        _, feats = CONSTRUCTORS["vgg8"](num_classes=200).eval()(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats["feats"]] == [64, 32, 16, 8, 4]


def test_train_mode_bn_runs_once_per_forward():
    model = CONSTRUCTORS["wrn_16_1"]().train()
    model(torch.randn(4, 3, 16, 16))
    assert all(m.num_batches_tracked.item() == 1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_registry_names_and_teachers():
    mdistiller_names = {
        "resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13", "resnet8", "resnet14",
        "resnet20", "resnet32", "resnet44", "resnet8x4", "ResNet18", "wrn_16_1", "wrn_16_2", "wrn_40_1",
        "vgg8", "vgg11", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
    }  # fmt: skip
    assert set(cifar_model_dict) == mdistiller_names | {"ResNet34"}
    assert set(cifar_models) == set(cifar_model_dict)
    teachers = {name: path for name, (_, path) in cifar_model_dict.items() if path is not None}
    assert set(teachers) == {"resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13"}
    ckpts = Path(__file__).resolve().parents[1] / "download_ckpts"
    for name, path in teachers.items():
        assert Path(path) == ckpts / "cifar_teachers" / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    assert os.path.dirname(os.path.dirname(teachers["vgg13"])) == CIFAR_TEACHER_DIR
    assert set(tiny_imagenet_model_dict) == set(tiny_imagenet_models)
    assert set(tiny_imagenet_models) == {"ResNet18", "MobileNetV2", "ShuffleV2"}
    ti_path = tiny_imagenet_model_dict["ResNet18"][1]
    assert Path(ti_path) == ckpts / "tiny_imagenet_teachers" / "ResNet18_vanilla" / "ti_res18"
    assert tiny_imagenet_model_dict["MobileNetV2"][1] is None
    assert cifar_models.get("resnet8x4") is cifar_model_dict["resnet8x4"][0]


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        cifar_models.get("resnet8x5")
    message = str(info.value)
    assert "resnet8x4" in message and "ShuffleV2" in message and "wrn_40_2" in message
