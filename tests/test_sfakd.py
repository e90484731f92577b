"""SFAKD: every CIFAR pair's shapes, the loss and prediction path against direct formulas, gradients."""

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses.kd import kd_loss
from mdistiller.models import cifar_model_dict

# pair -> the common (h, w) of the last-stage maps at 32x32: the SFA filter size.
PAIR_SIZES = {
    "res56_res20": (8, 8), "res110_res32": (8, 8), "res32x4_res8x4": (8, 8), "wrn40_2_wrn_16_2": (8, 8),
    "wrn40_2_wrn_40_1": (8, 8), "vgg13_vgg8": (4, 4), "res32x4_shuv1": (4, 4), "wrn40_2_shuv1": (4, 4),
    "vgg13_mv2": (2, 2), "res50_mv2": (2, 2), "res32x4_mv2": (2, 2),
}


def build(cfg, num_classes=100, seed=0):
    torch.manual_seed(seed)
    student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=num_classes)
    teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=num_classes)
    return distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, num_data=10, num_classes=num_classes)


def test_every_published_pair_has_a_config():
    assert sorted(f[:-5] for f in os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd"))) == sorted(PAIR_SIZES)


# Channels of feats[-1] (the last-stage map) of each model at 32x32.
LAST_CHANNELS = {"resnet20": 64, "resnet32": 64, "resnet56": 64, "resnet110": 64, "resnet8x4": 256, "resnet32x4": 256,
                 "wrn_16_2": 128, "wrn_40_1": 64, "wrn_40_2": 128, "vgg8": 512, "vgg13": 512, "ShuffleV1": 960,
                 "MobileNetV2": 160, "ResNet50": 2048}


@pytest.mark.parametrize("pair", sorted(PAIR_SIZES))
def test_pair_builds_and_forward_shapes(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd", f"{pair}.yaml"))
    distiller = build(cfg)
    s_channels, t_channels = LAST_CHANNELS[cfg.DISTILLER.STUDENT], LAST_CHANNELS[cfg.DISTILLER.TEACHER]
    size = PAIR_SIZES[pair]
    assert distiller.feature_size == size
    assert distiller.sfa.real_weight.shape == (s_channels, *size)
    assert distiller.transfer[0].in_channels == s_channels and distiller.transfer[-3].out_channels == t_channels
    assert distiller.transfer[0].out_channels == (s_channels + t_channels) // 2
    projected = []
    distiller.transfer.register_forward_hook(lambda module, inputs, output: projected.append(output.shape))
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    distiller.train()
    with torch.no_grad():
        logits, losses = distiller(image=image, target=target, epoch=1)
    assert logits.shape == (2, 100) and set(losses) == {"loss_feat"} and losses["loss_feat"].ndim == 0
    assert projected == [(2, t_channels, *size)]


@pytest.fixture
def small():
    cfg = build_cfg(None, ["DISTILLER.TYPE=SFAKD", "DISTILLER.TEACHER=resnet32x4", "DISTILLER.STUDENT=vgg8",
                           "DATASET.IMAGE_SIZE=16"])
    return cfg, build(cfg, num_classes=10)


def test_loss_and_prediction_against_direct_formulas(small):
    cfg, distiller = small
    distiller.eval()  # deterministic BatchNorm for the comparison
    image, target = torch.randn(3, 3, 16, 16), torch.randint(0, 10, (3,))
    with torch.no_grad():
        logits, losses = distiller.forward_train(image, target)
        s_map = distiller.student(image)[1]["feats"][-1]
        t_logits, t_feats = distiller.teacher(image)
        sfa = distiller.sfa
        spatial = F.conv2d(s_map, sfa.w0.weight, sfa.w0.bias)
        projected = distiller.transfer(0.5 * sfa.frequency_branch(s_map) + 0.5 * spatial)
        expected_logits = projected.mean(dim=(2, 3)) @ distiller.teacher.fc.weight.T + distiller.teacher.fc.bias
        test_logits = distiller(image=image)
    # vgg8's last map is 2x2 at 16x16, resnet32x4's 4x4: the teacher's is average-pooled by 2.
    assert s_map.shape[-2:] == (2, 2) and distiller.feature_size == (2, 2)
    t_map = F.avg_pool2d(t_feats["feats"][-1], 2)
    assert losses["loss_feat"].item() == pytest.approx(((projected - t_map) ** 2).mean().item(), rel=1e-5)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(test_logits, expected_logits)  # evaluation uses the training path

    pooled = build(build_cfg(None, list(cfg_opts(cfg)) + ["SFAKD.POOLED=True", "SFAKD.LOSS.CE_WEIGHT=0.5",
                                                           "SFAKD.LOSS.KD_WEIGHT=2.0", "SFAKD.TEMPERATURE=3.0"]),
                   num_classes=10)
    pooled.eval()
    with torch.no_grad():
        logits, losses = pooled.forward_train(image, target)
        t_logits, t_feats = pooled.teacher(image)
        projected = pooled.project(pooled.student(image)[1]["feats"][-1])
    gap_diff = projected.mean(dim=(2, 3)) - t_feats["feats"][-1].mean(dim=(2, 3))  # GAP of the pooled map = GAP
    assert set(losses) == {"loss_feat", "loss_ce", "loss_kd"}
    assert losses["loss_feat"].item() == pytest.approx((gap_diff**2).mean().item(), rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.5 * F.cross_entropy(logits, target).item(), rel=1e-6)
    assert losses["loss_kd"].item() == pytest.approx(2.0 * kd_loss(logits, t_logits, 3.0).item(), rel=1e-6)


def cfg_opts(cfg):
    return ["DISTILLER.TYPE=SFAKD", f"DISTILLER.TEACHER={cfg.DISTILLER.TEACHER}",
            f"DISTILLER.STUDENT={cfg.DISTILLER.STUDENT}", f"DATASET.IMAGE_SIZE={cfg.DATASET.IMAGE_SIZE}"]


def test_gradients_reach_student_and_sfakd_modules_only():
    # 4x4 maps at 32x32: on 2x2 maps every frequency bin is its own conjugate, so the filter's
    # imaginary part has no effect there and rightly gets a zero gradient.
    cfg = build_cfg(None, ["DISTILLER.TYPE=SFAKD", "DISTILLER.TEACHER=resnet32x4", "DISTILLER.STUDENT=vgg8"])
    distiller = build(cfg, num_classes=10)
    assert distiller.feature_size == (4, 4)
    distiller.train()
    logits, losses = distiller(image=torch.randn(4, 3, 32, 32), target=torch.randint(0, 10, (4,)), epoch=1)
    sum(losses.values()).backward()
    student_head = {"classifier.weight", "classifier.bias"}  # the student's own classifier is off the path
    for name, p in distiller.student.named_parameters():
        assert (p.grad is None) == (name in student_head) == (not p.requires_grad), name
    for module in (distiller.sfa, distiller.transfer):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())  # incl. teacher.fc
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    assert all(id(p) not in learnable for p in distiller.teacher.parameters())
    assert distiller.get_extra_parameters() == sum(p.numel() for m in (distiller.sfa, distiller.transfer)
                                                   for p in m.parameters())


def test_student_classifier_variant_and_config_errors():
    opts = ["DISTILLER.TYPE=SFAKD", "DISTILLER.TEACHER=resnet20", "DISTILLER.STUDENT=resnet8", "DATASET.IMAGE_SIZE=16"]
    own = build(build_cfg(None, opts + ["SFAKD.TEACHER_CLASSIFIER=False", "SFAKD.LOSS.CE_WEIGHT=1.0"]), num_classes=10)
    own.eval()
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(own(image=image), own.student(image)[0])
    with pytest.raises(ConfigError, match="CE_WEIGHT or SFAKD.LOSS.KD_WEIGHT"):
        build(build_cfg(None, opts + ["SFAKD.TEACHER_CLASSIFIER=False"]), num_classes=10)
    with pytest.raises(ConfigError, match="CUT_OFF"):
        build(build_cfg(None, opts + ["SFAKD.CUT_OFF=0.0"]), num_classes=10)
    # MobileNetV2's classifier sees its 1280-channel head, not the 160-channel last stage.
    with pytest.raises(ConfigError, match="TEACHER_CLASSIFIER False"):
        build(build_cfg(None, opts[:1] + ["DISTILLER.TEACHER=MobileNetV2", "DISTILLER.STUDENT=resnet8"]), num_classes=10)


def test_bf16_autocast_step(small):
    _, distiller = small
    distiller.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=1)
    assert torch.isfinite(losses["loss_feat"]) and losses["loss_feat"].dtype == torch.float32
    losses["loss_feat"].backward()
    assert torch.isfinite(distiller.sfa.real_weight.grad).all()


TIMM_TEACHERS = {  # tiny timm teachers at 32 px: where each head pools, and what it does after pooling
    "convnext": ("timm:convnext_atto", dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))),  # pool, LayerNorm, fc
    "vit_token": ("timm:vit_tiny_patch16_224", dict(patch_size=4, embed_dim=48, depth=2, num_heads=3)),  # class token
    "vit_avg": ("timm:vit_tiny_patch16_224", dict(patch_size=4, embed_dim=48, depth=2, num_heads=3,
                                                  global_pool="avg", fc_norm=True)),  # patch mean, fc_norm, fc
    "swin": ("timm:swin_tiny_patch4_window7_224", dict(window_size=2, embed_dim=24, depths=(1, 1, 1, 1),
                                                       num_heads=(1, 1, 2, 2))),  # NHWC mean, fc
    "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", dict(patch_size=4, embed_dim=48, depth=2,
                                                                    num_heads=3)),  # two tokens, two heads
}


def pooled_map_by_hand(family: str, final: torch.Tensor) -> torch.Tensor:
    """An (N, C, h, w) map whose spatial mean is what each model's head pools from its final features
    (timm's forward_features output): the map itself, Swin's NHWC map permuted, a ViT's patch grid,
    or the class token as a 1x1 map."""
    if family == "convnext":
        return final
    if family == "swin":
        return final.permute(0, 3, 1, 2)
    if family == "vit_avg":
        return final[:, 1:].transpose(1, 2).reshape(final.shape[0], final.shape[2], 8, 8)
    return final[:, 0, :, None, None]  # the class token (DeiT: equal to the distillation token in this check)


@pytest.mark.parametrize("family", sorted(TIMM_TEACHERS))
def test_teacher_head_on_the_teachers_own_pooled_vector_gives_its_logits(family):
    """SFAKD's default prediction is the teacher's whole head after pooling: on a map whose mean is
    what the teacher pools from its own final features, it must give timm's own logits (ConvNeXt's
    head LayerNorm included; a ViT's class token or fc_norm'd patch mean). DeiT distilled: both its
    tokens set to one vector, so its logits are the mean of the two heads on that vector."""
    from mdistiller.models.external import build_external_model

    name, kwargs = TIMM_TEACHERS[family]
    torch.manual_seed(0)
    teacher = build_external_model(name, 10, 32, kwargs)
    student = cifar_model_dict["resnet8"][0](num_classes=10)
    cfg = build_cfg(None, ["DISTILLER.TYPE=SFAKD", "DATASET.IMAGE_SIZE=32"])
    distiller = distiller_dict["SFAKD"](student, teacher, cfg, num_classes=10, num_data=8)
    image = torch.randn(3, 3, 32, 32)
    timm_model = teacher.model
    with torch.no_grad():
        final = timm_model.forward_features(image)
        if family == "deit_distilled":
            expected = (timm_model.head(final[:, 0]) + timm_model.head_dist(final[:, 0])) / 2
        else:
            expected = timm_model(image)
        got = distiller.predict(pooled_map_by_hand(family, final), None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("student_name,kwargs", [
    ("timm:convnext_atto", dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))),  # its head LayerNorm
    ("timm:vit_tiny_patch16_224", dict(patch_size=4, embed_dim=48, depth=2, num_heads=3)),  # its final norm
])
def test_students_own_head_is_frozen_so_every_trainable_parameter_learns(student_name, kwargs):
    """With the teacher's head, the student's own head is on no path: its parameters are frozen, and
    every parameter still trainable gets a gradient in one step, which DistributedDataParallel with
    find_unused_parameters False (SFAKD's setting) needs."""
    from mdistiller.models.external import build_external_model

    torch.manual_seed(0)
    student = build_external_model(student_name, 10, 32, kwargs)
    teacher = cifar_model_dict["resnet8"][0](num_classes=10)
    cfg = build_cfg(None, ["DISTILLER.TYPE=SFAKD", "DATASET.IMAGE_SIZE=32"])
    distiller = distiller_dict["SFAKD"](student, teacher, cfg, num_classes=10, num_data=8)
    assert not distiller.ddp_find_unused_parameters
    frozen = {name for name, p in student.named_parameters() if not p.requires_grad}
    own_head = {"model.head.fc.weight", "model.head.fc.bias", "model.head.norm.weight", "model.head.norm.bias"} \
        if "convnext" in student_name else {"model.head.weight", "model.head.bias", "model.norm.weight", "model.norm.bias"}
    assert frozen == own_head
    distiller.train()
    _, losses = distiller(image=torch.randn(2, 3, 32, 32), target=torch.tensor([1, 2]))
    sum(losses.values()).backward()
    idle = [name for name, p in distiller.named_parameters()
            if p.requires_grad and p.grad is None and not name.startswith("teacher.")]
    assert idle == []
