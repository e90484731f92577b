"""Weights for timm / torchvision models: checkpoint forms, classifier fit, offline downloads."""

import pytest
import torch
from torch import nn

from mdistiller.errors import CheckpointError
from mdistiller.models.external import build_external_model
from mdistiller.models.pretrained import load_into, torchvision_state_dict, unwrap_state_dict

TINY_RESNET = dict(stem_width=8, channels=(16, 32, 64, 128))


def tiny(num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_external_model("timm:resnet10t", num_classes, 32, TINY_RESNET)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,                                             # plain state dict
    lambda sd: {"state_dict": sd, "epoch": 3},                 # timm train script
    lambda sd: {"state_dict": {k: v * 0 for k, v in sd.items()}, "state_dict_ema": sd},  # EMA preferred
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},  # DDP-saved
    lambda sd: {"model": {f"model.{k}": v for k, v in sd.items()}},   # an mdistiller student file
    lambda sd: {"model": {**{f"student.model.{k}": v for k, v in sd.items()},
                          "teacher.fc.weight": torch.zeros(1)}},   # a whole distiller checkpoint
])
def test_every_checkpoint_form_loads_the_same_weights(wrap):
    source, target = tiny(10, 0), tiny(10, 1)
    weights = unwrap_state_dict(wrap(source.model.state_dict()), "test file")
    load_into(target.model, weights, "test file", new_head=False)
    for (name, a), b in zip(source.model.state_dict().items(), target.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_teacher_classifier_of_another_size_is_refused_with_the_fix():
    imagenet_like = tiny(1000, 0).model.state_dict()
    with pytest.raises(CheckpointError, match=r"classifier has 1000 outputs, the dataset 10 classes\. Fine-tune"):
        load_into(tiny(10, 1).model, imagenet_like, "teacher.pth", new_head=False, num_classes=10)


def test_fine_tuning_keeps_a_fresh_classifier_and_loads_the_rest():
    imagenet_like = tiny(1000, 0).model.state_dict()
    student = tiny(10, 1)
    fresh_head = student.model.fc.weight.clone()
    load_into(student.model, imagenet_like, "pretrained", new_head=True)
    assert torch.equal(student.model.fc.weight, fresh_head)
    assert torch.equal(student.model.conv1[0].weight, imagenet_like["conv1.0.weight"])


def test_a_classifier_of_another_width_is_another_architecture_not_another_class_count():
    wider = build_external_model("timm:resnet10t", 10, 32, dict(stem_width=8, channels=(16, 32, 64, 256)))
    with pytest.raises(CheckpointError, match="wrong shape .*another architecture"):
        load_into(tiny(10, 1).model, wider.model.state_dict(), "wide.pth", new_head=False)


def test_a_file_of_another_architecture_names_the_keys():
    with pytest.raises(CheckpointError, match="missing .*unexpected"):
        load_into(tiny(10, 0).model, {"features.0.weight": torch.zeros(3)}, "other.pth", new_head=False)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        unwrap_state_dict({"epoch": 3}, "empty.pth")


def test_unknown_torchvision_weights_name_the_form():
    with pytest.raises(CheckpointError, match="torchvision:ResNet18_Weights.IMAGENET1K_V1"):
        torchvision_state_dict("torchvision:ResNet18_Weights.NOPE")


def test_timm_pretrained_loads_the_tag_the_name_carries(tmp_path, monkeypatch):
    from fake_hub import offline_hub, place_timm_weights
    from mdistiller.models.pretrained import timm_state_dict

    cache = offline_hub(monkeypatch, tmp_path)
    place_timm_weights(cache, "resnet18", {"fc.bias": torch.full((3,), 1.0)})   # the default tag, a1_in1k
    place_timm_weights(cache, "resnet18.tv_in1k", {"fc.bias": torch.full((3,), 2.0)})
    assert torch.equal(timm_state_dict("resnet18")["fc.bias"], torch.full((3,), 1.0))
    assert torch.equal(timm_state_dict("resnet18.a1_in1k")["fc.bias"], torch.full((3,), 1.0))
    assert torch.equal(timm_state_dict("resnet18.tv_in1k")["fc.bias"], torch.full((3,), 2.0))
    with pytest.raises(CheckpointError, match="Cannot download timm weights for resnet18.gluon_in1k"):
        timm_state_dict("resnet18.gluon_in1k")   # not in the cache, offline


def test_an_unknown_pretrained_tag_names_the_known_ones():
    from mdistiller.errors import UnknownNameError
    from mdistiller.models.external import check_external_name

    check_external_name("timm:convnext_tiny.fb_in1k")
    with pytest.raises(UnknownNameError, match="Did you mean timm:convnext_tiny.fb_in1k"):
        check_external_name("timm:convnext_tiny.fb_in1kk")
