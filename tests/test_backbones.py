"""ResNeXt, deformable stages and the deep stem of mdistiller_dense.backbones, and the dense names they add."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import fcos_resnet50_fpn

from mdistiller.errors import CheckpointError, ConfigError, UnknownNameError
from mdistiller_dense.backbones import DeformConv2d, build_resnet_backbone
from mdistiller_dense.config import DENSE_CFG
from mdistiller_dense.models import build_dense_model, build_detector, build_segmenter, parse_model_name


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resnext_count(blocks, groups: int, base_width: int) -> int:
    """Parameters of a ResNeXt with a 1000-way fc, counted from the paper's block (Xie et al. 2017, Table 1)."""
    total = 3 * 64 * 49 + 2 * 64 + 2048 * 1000 + 1000
    inplanes = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2 ** stage
        width, out = planes * base_width // 64 * groups, 4 * planes
        for i in range(n):
            total += inplanes * width + width * (width // groups) * 9 + width * out + 2 * (2 * width + out)
            if i == 0:
                total += inplanes * out + 2 * out
            inplanes = out
    return total


def test_resnext_grouped_convs_and_parameter_counts():
    with torch.device("meta"):
        x32 = build_resnet_backbone("resnext101_32x4d", nn.BatchNorm2d)
        x64 = build_resnet_backbone("resnext101_64x4d", nn.BatchNorm2d)
        reference = resnet.resnext101_64x4d(weights=None)
    # width = floor(planes * 4 / 64) * groups: 32x4d 128 / 256 / 512 / 1024, 64x4d twice that
    for stage, width in zip((1, 2, 3, 4), (128, 256, 512, 1024)):
        conv = getattr(x32, f"layer{stage}")[0].conv2
        assert conv.groups == 32 and conv.weight.shape == (width, width // 32, 3, 3)
        assert getattr(x64, f"layer{stage}")[0].conv2.weight.shape == (2 * width, 2 * width // 64, 3, 3)
    assert x32.layer2[0].conv2.stride == (2, 2) and x32.layer2[0].conv1.stride == (1, 1)  # pytorch style
    assert count(x64) == count(reference) == resnext_count((3, 4, 23, 3), 64, 4)
    assert count(x32) == resnext_count((3, 4, 23, 3), 32, 4)
    assert round(count(x32) / 1e6, 1) == 44.2  # ResNeXt-101 (32x4d), 44.18M as published


def test_deformable_conv_with_zero_offsets_is_the_plain_conv():
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=False)
    deform = DeformConv2d.like(plain)
    with torch.no_grad():
        deform.weight.copy_(plain.weight)
    assert deform.conv_offset.weight.shape == (18, 8, 3, 3) and not deform.conv_offset.weight.any()
    x = torch.randn(2, 8, 11, 9)
    expected = F.conv2d(x, plain.weight, stride=2, padding=2, dilation=2, groups=4)
    torch.testing.assert_close(deform(x), expected, rtol=1e-5, atol=1e-5)


def test_deformable_conv_offsets_shift_the_samples_and_learn():
    torch.manual_seed(0)
    deform = DeformConv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        deform.conv_offset.bias[1::2] = 1.0  # every kernel point one pixel right: (dy, dx) = (0, 1)
    x = torch.randn(1, 4, 7, 8)
    shifted = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], -1)
    expected = F.conv2d(shifted, deform.weight, padding=1)
    out = deform(x)
    torch.testing.assert_close(out[..., 1:], expected[..., 1:], rtol=1e-5, atol=1e-5)  # column 0 reads x[..., 0]
    with torch.no_grad():
        deform.conv_offset.bias.uniform_(-0.4, 0.4)  # off the integer grid: the bilinear sampling has a gradient
    deform(x).square().sum().backward()
    assert deform.conv_offset.weight.grad.abs().sum() > 0 and deform.conv_offset.bias.grad.abs().sum() > 0
    assert deform.weight.grad.abs().sum() > 0


def test_dcn_stages_replace_conv2_from_c3():
    with torch.device("meta"):
        model = build_resnet_backbone("resnext101_32x4d", nn.BatchNorm2d, dcn_stages=[3, 4, 5])
        plain = build_resnet_backbone("resnext101_32x4d", nn.BatchNorm2d)
    assert all(isinstance(block.conv2, nn.Conv2d) for block in model.layer1)
    for layer in (model.layer2, model.layer3, model.layer4):
        assert all(isinstance(block.conv2, DeformConv2d) for block in layer)
    state = model.state_dict()
    assert state["layer3.0.conv2.weight"].shape == (512, 16, 3, 3)  # grouped, as mmdetection's X101 DCN
    assert state["layer3.0.conv2.conv_offset.weight"].shape == (18, 512, 3, 3)
    assert "layer3.0.conv2.bias" not in state and model.layer2[0].conv2.conv_offset.stride == (2, 2)
    blocks = 4 + 23 + 3
    widths = 4 * 256 + 23 * 512 + 3 * 1024
    assert count(model) - count(plain) == 18 * 9 * widths + 18 * blocks


@pytest.mark.slow
def test_dcn_backbone_takes_plain_imagenet_weights(tmp_path):
    plain = build_resnet_backbone("resnet50", nn.BatchNorm2d)
    path = tmp_path / "r50.pth"
    torch.save({"model": plain.state_dict()}, path)
    model = build_resnet_backbone("resnet50", nn.BatchNorm2d, str(path), dcn_stages=[5])
    torch.testing.assert_close(model.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)
    assert not model.layer4[1].conv2.conv_offset.weight.any()  # offsets start at zero


@pytest.mark.parametrize("stages, name, words", [([3], "resnet18", "Bottleneck"), ([1], "resnet50", "2..5")])
def test_bad_dcn_stages(stages, name, words):
    with pytest.raises(ConfigError, match=words):
        build_resnet_backbone(name, nn.BatchNorm2d, dcn_stages=stages)


def test_deep_stem_layout_and_output_stride():
    model = build_resnet_backbone("resnet18", nn.BatchNorm2d, deep_stem=True).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("stem.")}
    assert shapes["stem.0.weight"] == (32, 3, 3, 3) and shapes["stem.3.weight"] == (32, 32, 3, 3)
    assert shapes["stem.6.weight"] == (64, 32, 3, 3) and shapes["stem.7.running_mean"] == (64,)
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    assert model.stem[0].stride == (2, 2) and model.stem[3].stride == (1, 1)
    assert not hasattr(model, "conv1") and not hasattr(model, "bn1")
    assert list(model._modules)[:3] == ["stem", "maxpool", "layer1"]
    x = torch.randn(1, 3, 64, 64)
    assert model.stem(x).shape == (1, 64, 32, 32) and model(x).shape == (1, 1000)
    segmenter = build_segmenter("deeplabv3_resnet18", 3, deep_stem=True).eval()
    assert segmenter.backbone(x)["out"].shape == (1, 512, 8, 8)  # output stride 8


def test_deep_stem_trains_in_detectors_from_scratch_and_freezes_with_weights():
    model = build_detector("fcos_resnet18_fpn", 3, 64, 64, deep_stem=True)
    assert all(p.requires_grad for p in model.backbone.body.stem.parameters())
    assert not hasattr(model.backbone.body, "conv1")


def test_new_names_parse_and_unknown_ones_suggest():
    assert parse_model_name("fcos_resnext101_64x4d_fpn") == ("fcos", "resnext101_64x4d")
    assert parse_model_name("deeplabv3_resnext101_32x4d") == ("deeplabv3", "resnext101_32x4d")
    assert parse_model_name("retinanet_resnet50_fpn") == ("retinanet", "resnet50")
    with pytest.raises(UnknownNameError, match="Did you mean fcos_resnext101_32x4d_fpn"):
        parse_model_name("fcos_resnext101_32x8d_fpn")
    with pytest.raises(UnknownNameError, match="resnext101_64x4d"):
        parse_model_name("fcos_resnext101_64x4d")  # detectors end in _fpn


@pytest.mark.parametrize("name", ["fcos_resnext101_64x4d_fpn", "retinanet_resnext101_32x4d_fpn",
                                  "fasterrcnn_resnext101_64x4d_fpn", "deeplabv3_resnext101_32x4d",
                                  "fcn_resnext101_64x4d"])
def test_full_size_x101_dcn_models_on_the_meta_device(name):
    cfg = DENSE_CFG.clone()
    cfg.MODEL.TEACHER_DCN_STAGES = [3, 4, 5]
    with torch.device("meta"):
        teacher = build_dense_model(name, 81, cfg.MODEL, teacher=True)
        student = build_dense_model(name, 81, cfg.MODEL)
    offsets = [m for m in teacher.modules() if isinstance(m, DeformConv2d)]
    assert len(offsets) == 4 + 23 + 3 and not any(isinstance(m, DeformConv2d) for m in student.modules())
    if name.startswith("fcos"):  # torchvision's FCOS-R50, its ResNet-50 body swapped for X101-64x4d + DCN
        with torch.device("meta"):
            reference = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
            r50, x101 = resnet.resnet50(), resnet.resnext101_64x4d()
        dcn = sum(18 * 9 * m.weight.shape[0] + 18 for m in offsets)
        assert count(teacher) == count(reference) - count(r50) + count(x101) + dcn
        assert count(student) == count(reference) - count(r50) + count(x101)


def test_teacher_dcn_stages_from_the_config():
    cfg = DENSE_CFG.clone()
    cfg.MODEL.DCN_STAGES = [5]
    with torch.device("meta"):
        model = build_dense_model("retinanet_resnet50_fpn", 5, cfg.MODEL)
    assert isinstance(model.backbone.body.layer4[0].conv2, DeformConv2d)
    assert isinstance(model.backbone.body.layer3[0].conv2, nn.Conv2d)


def test_deep_stem_refuses_torchvision_weights(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save({"model": build_resnet_backbone("resnet18", nn.BatchNorm2d).state_dict()}, path)
    with pytest.raises(CheckpointError, match="stem.0.weight"):
        build_resnet_backbone("resnet18", nn.BatchNorm2d, str(path), deep_stem=True)
