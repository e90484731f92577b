"""The teacher's fast path: BN folded into convolutions (outputs equal in fp32), inference mode,
opt-outs, and the original teacher (what checkpoints hold) left untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.fast_path import prepare_distiller
from mdistiller.engine.fast_teacher import InferenceTeacher, fold_batchnorm
from mdistiller.models import cifar_model_dict


pytestmark = pytest.mark.usefixtures("torch_single_thread")

def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as a trained teacher has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def flat(output):
    logits, feats = output
    return [logits, feats["pooled_feat"], *feats["feats"], *feats["preact_feats"]]


def reference_bn_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)) written out from the BN definition, in float64."""
    y = F.conv2d(x.double(), conv.weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    scale = bn.weight.double() / torch.sqrt(var + bn.eps)
    return (y - mean[None, :, None, None]) * scale[None, :, None, None] + bn.bias.double()[None, :, None, None]


def test_folded_conv_equals_bn_of_conv_from_the_definition():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)))
    x = torch.randn(2, 3, 6, 6)
    folded, pairs = fold_batchnorm(model, x)
    assert pairs == 1 and isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    expected = reference_bn_conv(model[0], model[1], x)
    torch.testing.assert_close(folded(x).double(), expected, rtol=1e-5, atol=1e-5)


def fold_and_compare(name: str):
    """Fold a randomly initialised model with trained-like BN; every output equal to 1e-5 in fp32."""
    torch.manual_seed(0)
    model = randomise_bn(cifar_model_dict[name][0](num_classes=10))
    x = torch.randn(2, 3, 16, 16)
    folded, pairs = fold_batchnorm(model, x)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert pairs > 0 and left == bns - pairs
    with torch.no_grad():
        expected, got = flat(model(x)), flat(folded(x))
    for e, g in zip(expected, got):
        scale = e.abs().max().item()
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * max(scale, 1.0))
    return folded


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8x4", "MobileNetV2", "ShuffleV1"])
def test_fold_keeps_every_output_to_1e5_in_fp32(name):
    fold_and_compare(name)


def test_bn_reading_a_conv_output_that_is_also_a_feature_stays():
    """WRN's stem conv output is feats[0] and the first block's bn1 input: that BN must stay,
    while the conv1 -> bn2 pairs inside the blocks fold."""
    folded = fold_and_compare("wrn_16_2")
    assert isinstance(folded.block1.layer[0].bn1, nn.BatchNorm2d)
    assert isinstance(folded.block1.layer[0].bn2, nn.Identity)


class SharedConvOutput(nn.Module):
    """The conv output is read by its BN and also returned: folding would change the output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y), y


def test_conv_output_read_elsewhere_is_left_unfolded():
    model = randomise_bn(SharedConvOutput())
    x = torch.randn(2, 3, 5, 5)
    folded, pairs = fold_batchnorm(model, x)
    assert pairs == 0 and isinstance(folded.bn, nn.BatchNorm2d)
    for e, g in zip(model(x), folded(x)):
        assert torch.equal(e, g)


def kd_distiller(**solver):
    torch.manual_seed(0)
    cfg = build_cfg(None, ["DISTILLER.TYPE=KD"] + [f"SOLVER.{k}={v}" for k, v in solver.items()])
    student = cifar_model_dict["resnet8"][0](num_classes=10)
    teacher = randomise_bn(cifar_model_dict["resnet20"][0](num_classes=10))
    distiller = distiller_dict["KD"](student, teacher, cfg, num_data=10, num_classes=10)
    return prepare_distiller(distiller, cfg.SOLVER, torch.device("cpu"), channels_last=False), cfg


def test_distiller_uses_the_copy_and_keeps_the_teacher_state():
    distiller, _ = kd_distiller()
    teacher_state = copy.deepcopy(distiller.teacher.state_dict())
    x = torch.randn(4, 3, 16, 16)
    distiller.train()
    logits, feats = distiller.teacher_forward(x)
    runner = distiller.inference_teacher
    assert runner.folded_pairs > 0
    assert not logits.is_inference() and not logits.requires_grad
    with torch.no_grad():
        expected = distiller.teacher(x)
    for e, g in zip(flat(expected), flat((logits, feats))):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert feats["feats"][0] is feats["preact_feats"][0]  # aliasing kept
    # The copy is no part of the distiller's state, parameters or modules.
    assert set(distiller.state_dict()) == {f"{p}.{k}" for p in ("student", "teacher")
                                           for k in getattr(distiller, p).state_dict()}
    assert all(m is not runner.model for m in distiller.modules())
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key


def test_teacher_outputs_can_enter_losses_with_gradients():
    distiller, _ = kd_distiller()
    distiller.train()
    x = torch.randn(4, 3, 16, 16)
    logits, losses = distiller(image=x, target=torch.randint(0, 10, (4,)), epoch=1)
    _, feats = distiller.teacher_forward(x)
    student_feat = distiller.student(x)[1]["feats"][-1]
    loss = sum(losses.values()) + F.mse_loss(student_feat, feats["feats"][-1])  # saves the teacher tensor
    loss.backward()
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_copy_is_rebuilt_when_the_teacher_weights_change():
    distiller, _ = kd_distiller()
    x = torch.randn(2, 3, 16, 16)
    before = distiller.teacher_forward(x)[0]
    new_state = randomise_bn(copy.deepcopy(distiller.teacher), seed=5).state_dict()
    distiller.teacher.load_state_dict(new_state)  # what resuming a checkpoint does
    with torch.no_grad():
        expected = distiller.teacher(x)[0]
    after = distiller.teacher_forward(x)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_train_mode_teacher_hooks_and_opt_outs_use_the_real_teacher():
    x = torch.randn(2, 3, 16, 16)
    distiller, _ = kd_distiller()
    distiller.teacher.train()  # OFD-style: the teacher's BN uses batch statistics
    logits, _ = distiller.teacher_forward(x)
    with torch.no_grad():
        expected = distiller.teacher(x)[0]
    assert torch.equal(logits, expected) and distiller.inference_teacher.model is None

    distiller, _ = kd_distiller()
    seen = []
    distiller.teacher.layer3.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    distiller.teacher_forward(x)
    assert len(seen) == 1 and distiller.inference_teacher.model is None

    class NoFastTeacher(distiller_dict["KD"]):
        fast_teacher = False

    cfg = build_cfg(None, ["DISTILLER.TYPE=KD"])
    opted_out = NoFastTeacher(cifar_model_dict["resnet8"][0](num_classes=10),
                              cifar_model_dict["resnet8"][0](num_classes=10), cfg)
    opted_out = prepare_distiller(opted_out, cfg.SOLVER, torch.device("cpu"), channels_last=False)
    assert opted_out.inference_teacher is None

    switched_off, _ = kd_distiller(FAST_TEACHER=False)
    assert switched_off.inference_teacher is None


def test_inference_teacher_with_channels_last():
    torch.manual_seed(0)
    teacher = randomise_bn(cifar_model_dict["resnet8x4"][0](num_classes=10))
    runner = InferenceTeacher(teacher, channels_last=True)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    logits, feats = runner(x)
    assert runner.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = teacher(x)
    for e, g in zip(flat(expected), flat((logits, feats))):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_timm_resnet_teacher_is_folded_and_gives_the_same_outputs():
    """timm's ResNet has BatchNorm after every conv: the fast copy folds them (channels_last too)."""
    from tiny_models import tiny

    torch.manual_seed(0)
    teacher = randomise_bn(tiny("resnet", 10))
    runner = InferenceTeacher(teacher, channels_last=True)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    logits, feats = runner(x)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in runner.model.modules())
    assert runner.folded_pairs > 0 and left == bns - runner.folded_pairs
    with torch.no_grad():
        expected_logits, expected_feats = teacher(x)
    for e, g in zip([expected_logits, expected_feats["pooled_feat"], *expected_feats["feats"]],
                    [logits, feats["pooled_feat"], *feats["feats"]]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * max(e.abs().max().item(), 1.0))


def test_timm_vit_teacher_goes_through_unchanged_with_sdpa_attention(monkeypatch):
    """No BatchNorm in a ViT: the copy folds nothing and gives the teacher's outputs bit for bit;
    every block's attention is one F.scaled_dot_product_attention call (timm's fused_attn)."""
    from tiny_models import TINY_VIT, tiny

    torch.manual_seed(0)
    teacher = tiny("vit", 10).eval()
    runner = InferenceTeacher(teacher)
    x = torch.randn(2, 3, 32, 32)
    runner(x)  # builds the copy
    assert runner.folded_pairs == 0
    assert [type(m) for m in runner.model.modules()] == [type(m) for m in teacher.modules()]
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].shape) or sdpa(*a, **k))
    logits, feats = runner(x)
    heads, width = TINY_VIT["num_heads"], TINY_VIT["embed_dim"]
    assert calls == [torch.Size([2, heads, 1 + 8 * 8, width // heads])] * TINY_VIT["depth"]
    with torch.no_grad():
        expected_logits, expected_feats = teacher(x)
    assert torch.equal(logits, expected_logits) and torch.equal(feats["pooled_feat"], expected_feats["pooled_feat"])
    assert all(torch.equal(g, e) for g, e in zip(feats["feats"], expected_feats["feats"]))


def test_a_timm_teacher_gets_the_fast_path_in_a_distiller():
    from tiny_models import tiny

    torch.manual_seed(0)
    cfg = build_cfg(None, ["DISTILLER.TYPE=KD"])
    teacher = randomise_bn(tiny("resnet", 10))
    distiller = distiller_dict["KD"](cifar_model_dict["resnet8"][0](num_classes=10), teacher, cfg,
                                     num_data=10, num_classes=10)
    distiller = prepare_distiller(distiller, cfg.SOLVER, torch.device("cpu"), channels_last=False)
    distiller.train()
    logits, _ = distiller.teacher_forward(torch.randn(2, 3, 32, 32))
    assert distiller.inference_teacher is not None and distiller.inference_teacher.folded_pairs > 0
    assert not logits.requires_grad
