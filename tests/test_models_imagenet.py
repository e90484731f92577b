"""ImageNet models: the feature contract, torchvision parity and offline teacher-weight loading.

torchvision's own ResNets (built with ``weights=None``) are the independent reference for
parameter names, shapes, counts and logits. No test touches the network: the download function
is replaced by one that fails, and the hub cache is a temporary directory.
"""

import functools
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mdistiller.errors import CheckpointError, UnknownNameError
from mdistiller.models.imagenet import imagenet_model_dict
from mdistiller.models.imagenet import mobilenetv1 as mobilenetv1_module

TORCHVISION_RESNETS = {
    "ResNet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "ResNet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "ResNet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "ResNet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
    "ResNet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights.IMAGENET1K_V1),
}
ALL_MODELS = [*TORCHVISION_RESNETS, "MobileNetV1"]
# Published parameter count of MobileNetV1 (width 1.0, 1000 classes).
MOBILENET_V1_PARAMETERS = 4_231_976


class NotATensor:
    """A pickled object that ``torch.load(..., weights_only=True)`` must refuse."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode logits test all of them."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)


@functools.lru_cache(maxsize=None)
def shared_model(name: str) -> nn.Module:
    """One randomly initialised model per name, in eval mode, shared by the read-only tests."""
    torch.manual_seed(0)
    return imagenet_model_dict[name](pretrained=False).eval()


def expected_filename(name: str) -> str:
    return os.path.basename(TORCHVISION_RESNETS[name][1].url)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: inputs are tiny, and on a busy machine extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def hub_dir(tmp_path):
    """A fresh, empty torch hub directory; the previous one is restored afterwards."""
    previous = torch.hub.get_dir()
    directory = tmp_path / "hub"
    torch.hub.set_dir(str(directory))
    yield directory
    torch.hub.set_dir(previous)


@pytest.fixture
def no_network(monkeypatch):
    """Every download attempt fails (and is recorded) instead of reaching the network."""
    attempts = []

    def refuse(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


def test_registry_names_and_unknown_name():
    assert set(imagenet_model_dict) == set(ALL_MODELS)
    with pytest.raises(UnknownNameError, match="ResNet18"):
        imagenet_model_dict["ResNet181"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_contract(name):
    model = shared_model(name)
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 64, 64))

    assert logits.shape == (2, 1000)
    channels = model.get_stage_channels()
    assert len(feats["feats"]) == len(feats["preact_feats"]) == len(channels) == 5
    for index, (feat, preact) in enumerate(zip(feats["feats"], feats["preact_feats"])):
        side = 64 // 2 ** (index + 1)  # stem at stride 2, then strides 4, 8, 16, 32
        assert feat.shape == (2, channels[index], side, side)
        assert preact.shape == feat.shape
        assert (preact < 0).any(), "preact_feats must be taken before the ReLU"
        assert torch.equal(feat, torch.relu(preact))
    assert feats["pooled_feat"].shape == (2, channels[-1])
    torch.testing.assert_close(feats["pooled_feat"], feats["feats"][-1].mean(dim=(2, 3)))

    bns = model.get_bn_before_relu()
    assert [bn.num_features for bn in bns] == channels[1:]
    own_modules = {id(module) for module in model.modules()}
    assert all(isinstance(bn, nn.BatchNorm2d) and id(bn) in own_modules for bn in bns)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet18", "ResNet50", "MobileNetV1"])
def test_train_mode_backward_on_any_input_size(name):
    model = imagenet_model_dict[name]().train()
    logits, feats = model(torch.randn(2, 3, 72, 100))
    loss = logits.sum() + sum(f.sum() for f in feats["feats"] + feats["preact_feats"])
    loss.backward()  # fails if a ReLU overwrote a returned feature in place
    assert all(p.grad is not None for p in model.parameters())


def test_mobilenet_v1_stage_preacts_are_outputs_of_get_bn_before_relu():
    model = imagenet_model_dict["MobileNetV1"]().eval()  # own copy: hooks are added
    captured = []
    for bn in model.get_bn_before_relu():
        bn.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        _, feats = model(torch.randn(2, 3, 64, 64))
    assert len(captured) == 4
    for output, preact in zip(captured, feats["preact_feats"][1:]):
        assert torch.equal(output, preact)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION_RESNETS))
def test_resnet_matches_torchvision(name):
    torchvision_model = TORCHVISION_RESNETS[name][0](weights=None).eval()
    model = shared_model(name)

    ours, theirs = model.state_dict(), torchvision_model.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    assert count_parameters(model) == count_parameters(torchvision_model)

    randomize_batchnorm(torchvision_model)
    model.load_state_dict(torchvision_model.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], torchvision_model(images))


def test_mobilenet_v1_layout_matches_mdistiller():
    model = shared_model("MobileNetV1")
    state = model.state_dict()
    assert count_parameters(model) == MOBILENET_V1_PARAMETERS
    assert len(state) == 164
    assert state["model.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["model.1.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert state["model.1.3.weight"].shape == (64, 32, 1, 1)  # pointwise
    assert state["model.13.4.running_var"].shape == (1024,)
    assert state["fc.weight"].shape == (1000, 1024)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet18", "ResNet34"])
def test_pretrained_resnet_loads_from_hub_cache_without_network(name, hub_dir, no_network):
    torch.manual_seed(0)
    torchvision_model = TORCHVISION_RESNETS[name][0](weights=None).eval()
    randomize_batchnorm(torchvision_model)
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(torchvision_model.state_dict(), hub_dir / "checkpoints" / expected_filename(name))

    model = imagenet_model_dict[name](pretrained=True).eval()

    assert no_network == []
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], torchvision_model(images))


@pytest.mark.parametrize("name", list(TORCHVISION_RESNETS))
def test_pretrained_resnet_missing_file_names_file_and_directory(name, hub_dir, no_network):
    with pytest.raises(CheckpointError) as raised:
        imagenet_model_dict[name](pretrained=True)
    message = str(raised.value)
    assert "\n" not in message
    assert expected_filename(name) in message
    assert str(hub_dir / "checkpoints") in message
    assert no_network == [TORCHVISION_RESNETS[name][1].url]


def test_pretrained_resnet_corrupt_cached_file(hub_dir, no_network):
    path = hub_dir / "checkpoints" / expected_filename("ResNet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=expected_filename("ResNet18")):
        imagenet_model_dict["ResNet18"](pretrained=True)
    assert no_network == []


def test_pretrained_resnet_weights_of_another_architecture(hub_dir, no_network):
    path = hub_dir / "checkpoints" / expected_filename("ResNet34")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit ResNet"):
        imagenet_model_dict["ResNet34"](pretrained=True)


def test_mobilenet_v1_default_checkpoint_is_under_repo_download_ckpts():
    repo_root = Path(__file__).resolve().parents[1]
    expected = repo_root / "download_ckpts" / "imagenet_teachers" / "MobileNetV1.pth"
    assert mobilenetv1_module.DEFAULT_CHECKPOINT == expected


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "model_key"])
def test_pretrained_mobilenet_v1_loads_local_file(wrapped, tmp_path, monkeypatch, no_network):
    path = tmp_path / "imagenet_teachers" / "MobileNetV1.pth"
    monkeypatch.setattr(mobilenetv1_module, "DEFAULT_CHECKPOINT", path)
    source = imagenet_model_dict["MobileNetV1"]()
    randomize_batchnorm(source)
    path.parent.mkdir()
    state = source.state_dict()
    torch.save({"model": state} if wrapped else state, path)

    loaded = imagenet_model_dict["MobileNetV1"](pretrained=True).state_dict()

    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    assert no_network == []


def test_pretrained_mobilenet_v1_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "imagenet_teachers" / "MobileNetV1.pth"
    monkeypatch.setattr(mobilenetv1_module, "DEFAULT_CHECKPOINT", path)
    with pytest.raises(CheckpointError) as raised:
        imagenet_model_dict["MobileNetV1"](pretrained=True)
    message = str(raised.value)
    assert "\n" not in message
    assert "MobileNetV1.pth" in message and str(path.parent) in message


def test_teacher_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "MobileNetV1.pth"
    state = imagenet_model_dict["MobileNetV1"]().state_dict()
    torch.save({"model": state, "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        mobilenetv1_module.mobilenet_v1(pretrained=True, checkpoint=path)
