"""AT, OFD, RKD, FITNET, KDSVD, NST, PKT, SP, VID as distillers: wiring against independent loss
computations, one training step per pair (gradients reach the student and the method's modules,
never the teacher), MDistiller's state_dict names, teacher modes, build-time probing, configs."""

import glob
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import feature_reference as ref
from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses import ofd_margin
from mdistiller.models import cifar_model_dict

METHODS = ("AT", "OFD", "RKD", "FITNET", "KDSVD", "NST", "PKT", "SP", "VID")
MDISTILLER_KEYS = json.loads((Path(__file__).parent / "fixtures" / "mdistiller_cifar_state_keys.json").read_text())


def make(method, student="resnet8", teacher="resnet20", size=16, opts=(), num_classes=10):
    cfg = build_cfg(None, [f"DISTILLER.TYPE={method}", f"DATASET.IMAGE_SIZE={size}", *opts])
    torch.manual_seed(0)
    s = cifar_model_dict[student][0](num_classes=num_classes)
    t = cifar_model_dict[teacher][0](num_classes=num_classes)
    for bn in (m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # a "trained" teacher
        bn.weight.data.uniform_(0.3, 1.5)
        bn.bias.data.normal_(0, 0.5)
        bn.running_var.data.uniform_(0.5, 2.0)
    distiller = distiller_dict[method](s, t, cfg, num_data=100, num_classes=num_classes)
    return distiller, s, t


def batch(size=16, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def own_modules(distiller):
    return [m for name, m in distiller.named_children() if name not in ("student", "teacher")]


# -- wiring: loss_kd = FEAT_WEIGHT * the method's loss on the right features -----------------------
def reference_feature_loss(method, distiller, fs, ft):
    if method == "AT":
        return ref.at(fs["feats"][1:], ft["feats"][1:], 2)
    if method == "NST":
        return ref.nst(fs["feats"][1:], ft["feats"][1:])
    if method == "SP":
        return ref.sp(fs["feats"][-1], ft["feats"][-1])
    if method == "PKT":
        return ref.pkt(fs["pooled_feat"], ft["pooled_feat"])
    if method == "RKD":
        return ref.rkd(fs["pooled_feat"], ft["pooled_feat"])
    if method == "KDSVD":
        gauge = [torch.linalg.svd(f.reshape(f.shape[0], -1, f.shape[3]), full_matrices=False)[2].transpose(1, 2)
                 for f in ft["feats"][1:]]
        return ref.kdsvd(fs["feats"][1:], ft["feats"][1:], 1, teacher_gauge=gauge)
    if method == "FITNET":
        return float(((ref.as_np(distiller.conv_reg(fs["feats"][2])) - ref.as_np(ft["feats"][2])) ** 2).mean())
    if method == "OFD":
        total, n = 0.0, len(ft["preact_feats"][1:])
        for i, (f_s, f_t, bn) in enumerate(zip(fs["preact_feats"][1:], ft["preact_feats"][1:],
                                               distiller.teacher.get_bn_before_relu())):
            margin = [ref.ofd_margin(w, b) for w, b in zip(bn.weight.tolist(), bn.bias.tolist())]
            total += ref.partial_l2(distiller.connectors.connectors[i](f_s), f_t, margin) / 2 ** (n - i - 1)
        return total
    if method == "VID":
        return sum(ref.vid_nll(reg(f_s), f_t, torch.full((f_t.shape[1],), 5.0))
                   for reg, f_s, f_t in zip(distiller.regressors, fs["feats"][1:], ft["feats"][1:]))
    raise KeyError(method)


def check_gradients(distiller, student, teacher, losses):
    """Finite losses; the distillation term alone reaches the student and every parameter of the
    method's own modules; with CE every student parameter; the teacher never."""
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses["loss_kd"].backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for module in own_modules(distiller):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    losses["loss_ce"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_same_family_step_equals_independent_computation(method):
    opts = [f"{method}.LOSS.CE_WEIGHT=0.5", f"{method}.LOSS.FEAT_WEIGHT=7.0"]
    distiller, student, teacher = make(method, opts=opts)
    distiller.train()
    image, target = batch()
    logits, losses = distiller(image=image, target=target, epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"}
    with torch.no_grad():  # same modes, same batch: the very features the distiller saw
        _, fs = student(image)
        _, ft = teacher(image)
        expected = 7.0 * reference_feature_loss(method, distiller, fs, ft)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=2e-4)
    assert losses["loss_ce"].item() == pytest.approx(0.5 * F.cross_entropy(logits, target).item(), rel=1e-6)
    check_gradients(distiller, student, teacher, losses)


# -- cross-family steps (MobileNetV2 / ShuffleNet students and teachers for OFD and VID) -----------
MOBILE_PAIRS = [("ShuffleV1", "MobileNetV2"), ("ShuffleV2", "ShuffleV1"), ("MobileNetV2", "ShuffleV2"),
                ("resnet8", "ShuffleV2")]
STEP_CASES = [(m, "MobileNetV2", "wrn_16_2") for m in METHODS] + \
             [(m, s, t) for m in ("OFD", "VID") for s, t in MOBILE_PAIRS]


@pytest.mark.slow
@pytest.mark.parametrize("method, student_name, teacher_name", STEP_CASES)
def test_cross_family_training_step(method, student_name, teacher_name):
    distiller, student, teacher = make(method, student_name, teacher_name)
    distiller.train()
    _, losses = distiller(image=batch()[0], target=batch()[1], epoch=1)
    check_gradients(distiller, student, teacher, losses)


@pytest.mark.parametrize("method", METHODS)
def test_learnable_parameters_are_student_plus_own_modules(method):
    distiller, student, teacher = make(method)
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    own = [p for m in own_modules(distiller) for p in m.parameters()]
    assert learnable == {id(p) for p in student.parameters()} | {id(p) for p in own}
    assert not learnable & {id(p) for p in teacher.parameters()}
    assert distiller.get_extra_parameters() == sum(p.numel() for p in own)


# -- MDistiller's names, shapes and parameter counts (resnet32x4 -> resnet8x4 at 32x32) -----------
def bn_keys(prefix, channels):
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")} | \
           {f"{prefix}.num_batches_tracked": ()}


# Written out from MDistiller's modules: FitNet's ConvReg (conv + bn), OFD's ConnectorConvBN (a
# ModuleList `connectors` of Sequential(conv, bn)), VID's `regressors` (Sequential of three 1x1
# convs with ReLUs between); hint layer 2 of resnet8x4 / resnet32x4 is 128 x 16 x 16 on both sides.
EXTRA_KEYS = {
    "FITNET": {"conv_reg.conv.weight": (128, 128, 1, 1), "conv_reg.conv.bias": (128,)} | bn_keys("conv_reg.bn", 128),
    "OFD": {f"connectors.connectors.{i}.0.weight": (c, c, 1, 1) for i, c in enumerate((64, 128, 256))}
    | bn_keys("connectors.connectors.0.1", 64) | bn_keys("connectors.connectors.1.1", 128)
    | bn_keys("connectors.connectors.2.1", 256),
    "VID": {f"regressors.{i}.{j}.weight": (c, c, 1, 1) for i, c in enumerate((64, 128, 256)) for j in (0, 2, 4)},
}
EXTRA_PARAMETERS = {
    "FITNET": 128 * 128 + 128 + 2 * 128,
    "OFD": sum(c * c + 2 * c for c in (64, 128, 256)),
    "VID": sum(3 * c * c for c in (64, 128, 256)),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_mdistiller_checkpoint_loads_strictly(method):
    distiller, _, _ = make(method, "resnet8x4", "resnet32x4", size=32, num_classes=100)
    extra = EXTRA_KEYS.get(method, {})
    expected = {f"student.{k}": tuple(s) for k, s in MDISTILLER_KEYS["resnet8x4"]} | \
               {f"teacher.{k}": tuple(s) for k, s in MDISTILLER_KEYS["resnet32x4"]} | extra
    assert {k: tuple(v.shape) for k, v in distiller.state_dict().items()} == expected
    g = torch.Generator().manual_seed(2)
    mdistiller_state = {k: torch.randn(s, generator=g) if s else torch.tensor(3) for k, s in expected.items()}
    distiller.load_state_dict(mdistiller_state, strict=True)
    for key in extra:
        assert torch.equal(distiller.state_dict()[key], mdistiller_state[key].to(distiller.state_dict()[key].dtype))
    assert distiller.get_extra_parameters() == EXTRA_PARAMETERS.get(method, 0)


# -- teacher modes, buffers ----------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_teacher_mode(method):
    distiller, student, teacher = make(method)
    distiller.train()
    assert student.training and teacher.training == (method == "OFD")  # MDistiller's OFD trains its teacher's BN
    distiller.eval()
    assert not student.training and not teacher.training


def test_ofd_teacher_uses_batch_statistics_while_training():
    distiller, _, teacher = make("OFD")
    distiller.train()
    before = teacher.bn1.running_mean.clone()
    distiller(image=batch()[0], target=batch()[1], epoch=1)
    assert not torch.equal(before, teacher.bn1.running_mean)


def test_non_persistent_buffers_follow_dtype_and_stay_out_of_state_dict():
    for method, prefix in (("OFD", "margin_"), ("VID", "log_scale_")):
        distiller, _, _ = make(method)
        assert not any(k.startswith(prefix) for k in distiller.state_dict())
        distiller.double().train()
        image, target = batch()
        _, losses = distiller(image=image.double(), target=target, epoch=1)
        assert losses["loss_kd"].dtype == torch.float64
        assert all(b.dtype == torch.float64 for n, b in distiller.named_buffers() if n.startswith(prefix))


def test_ofd_margins_with_a_shufflev2_teacher():
    distiller, _, teacher = make("OFD", "resnet8", "ShuffleV2")
    channels = teacher.get_stage_channels()[1:]
    for margin, bn, c in zip(distiller.margins, teacher.get_bn_before_relu(), channels):
        assert margin.shape == (c,) and bn.num_features == c // 2
        assert torch.equal(margin[: c // 2], torch.zeros(c // 2))  # the untouched, non-negative half
        assert torch.allclose(margin[c // 2:], ofd_margin(bn.weight, bn.bias))
    _, ft = teacher(batch()[0])
    for f, c in zip(ft["preact_feats"][1:], channels):
        assert (f[:, : c // 2] >= 0).all()  # why the margin there cannot matter


def test_vid_log_scales_stay_fixed_as_in_mdistiller():
    distiller, _, _ = make("VID")
    variance = [F.softplus(s) + 1e-5 for s in distiller.log_scales]
    assert [v.shape[0] for v in variance] == [16, 32, 64]
    assert all(torch.allclose(v, torch.full_like(v, 5.0)) for v in variance)
    assert not {id(s) for s in distiller.log_scales} & {id(p) for p in distiller.get_learnable_parameters()}


# -- build-time probing --------------------------------------------------------------------------
def test_feature_shapes_matches_a_forward_and_leaves_the_model_untouched():
    model = cifar_model_dict["ShuffleV1"][0](num_classes=10).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = feature_shapes(model, 16)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    _, feats = model(torch.randn(2, 3, 16, 16))
    assert [s[1:] for s in shapes["feats"]] == [f.shape[1:] for f in feats["feats"]]
    assert [s[1:] for s in shapes["preact_feats"]] == [f.shape[1:] for f in feats["preact_feats"]]
    assert shapes["pooled_feat"][1:] == feats["pooled_feat"].shape[1:]


def test_fitnet_sizes_its_regressor_at_the_dataset_image_size():
    distiller, _, _ = make("FITNET", "resnet8", "MobileNetV2", size=16)  # 8x8 student hint, 4x4 teacher
    assert distiller.conv_reg.conv.stride == (2, 2) and distiller.conv_reg.conv.out_channels == 16
    assert make("FITNET", size=16, opts=["FITNET.INPUT_SIZE=(16, 16)"])[0].conv_reg.conv.kernel_size == (1, 1)


@pytest.mark.parametrize("opts, fragment", [
    (["FITNET.INPUT_SIZE=(64, 64)"], "DATASET.IMAGE_SIZE"),
    (["FITNET.HINT_LAYER=4"], "HINT_LAYER"),
])
def test_fitnet_config_errors(opts, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make("FITNET", opts=opts)


def test_vid_input_size_disagreeing_with_image_size_is_refused():
    with pytest.raises(ConfigError, match="VID.INPUT_SIZE"):
        make("VID", opts=["VID.INPUT_SIZE=(8, 8)"])


# -- config sections and files -------------------------------------------------------------------
def test_config_sections_equal_mdistiller_defaults():
    cfg = build_cfg(None)
    assert cfg.AT.P == 2 and cfg.AT.LOSS.CE_WEIGHT == 1.0 and cfg.AT.LOSS.FEAT_WEIGHT == 1000.0
    assert (cfg.RKD.DISTANCE_WEIGHT, cfg.RKD.ANGLE_WEIGHT, cfg.RKD.PDIST.EPSILON, cfg.RKD.PDIST.SQUARED) == (25, 50, 1e-12, False)
    assert cfg.FITNET.HINT_LAYER == 2 and tuple(cfg.FITNET.INPUT_SIZE) == (32, 32) and cfg.FITNET.LOSS.FEAT_WEIGHT == 100.0
    assert cfg.KDSVD.K == 1 and cfg.KDSVD.LOSS.FEAT_WEIGHT == 1.0
    assert cfg.OFD.LOSS.FEAT_WEIGHT == 0.001 and cfg.OFD.CONNECTOR.KERNEL_SIZE == 1
    assert (cfg.NST.LOSS.FEAT_WEIGHT, cfg.PKT.LOSS.FEAT_WEIGHT, cfg.SP.LOSS.FEAT_WEIGHT) == (50.0, 30000.0, 3000.0)
    assert (cfg.VID.EPS, cfg.VID.INIT_PRED_VAR, tuple(cfg.VID.INPUT_SIZE), cfg.VID.LOSS.FEAT_WEIGHT) == (1e-5, 5.0, (32, 32), 1.0)
    assert all(cfg[m].LOSS.CE_WEIGHT == 1.0 for m in METHODS)


def config_files(method):
    m = method.lower()
    return sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "cifar100", m, "*.yaml")))


@pytest.mark.parametrize("method", METHODS)
def test_cifar_configs_cover_the_kd_pairs_and_load(method):
    kd_dir = os.path.join(REPO_ROOT, "configs", "cifar100", "kd")
    files = config_files(method)
    assert [os.path.basename(f) for f in files] == sorted(os.listdir(kd_dir))
    for path in files:
        cfg = build_cfg(path)
        kd = build_cfg(os.path.join(kd_dir, os.path.basename(path)))
        assert cfg.DISTILLER.TYPE == method and cfg.EXPERIMENT.TAG == method.lower() + kd.EXPERIMENT.TAG[2:]
        assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER) == (kd.DISTILLER.TEACHER, kd.DISTILLER.STUDENT, kd.SOLVER)
        small = cfg.DISTILLER.STUDENT.startswith(("MobileNet", "Shuffle"))
        assert cfg.SOLVER.LR == (0.01 if small else 0.05) and cfg.SOLVER.WEIGHT_DECAY == 5e-4
    flat = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", f"{method.lower()}.yaml"))  # MDistiller's path
    assert flat == build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", method.lower(), "res32x4_res8x4.yaml"))


@pytest.mark.parametrize("path, method, teacher, student", [
    ("configs/imagenet/r34_r18/at.yaml", "AT", "ResNet34", "ResNet18"),
    ("configs/imagenet/r50_mv1/at.yaml", "AT", "ResNet50", "MobileNetV1"),
    ("configs/imagenet/r50_mv1/ofd.yaml", "OFD", "ResNet50", "MobileNetV1"),
])
def test_imagenet_configs_load(path, method, teacher, student):
    cfg = build_cfg(os.path.join(REPO_ROOT, path))
    assert (cfg.DATASET.TYPE, cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == \
           ("imagenet", method, teacher, student)
    if method == "OFD":
        assert (cfg.OFD.LOSS.FEAT_WEIGHT, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR) == (1e-4, 128, 0.05)
    else:
        assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR) == (512, 0.2)
    assert not math.isnan(cfg.SOLVER.LR)


@pytest.mark.parametrize("s_hw,t_hw", [((2, 2), (8, 8)), ((4, 8), (8, 4))])
def test_fitnet_pools_a_pair_its_regressor_cannot_bridge(s_hw, t_hw):
    """A student map 4x smaller than the teacher's, or larger on one side and smaller on the other:
    both maps average-pooled to the common (smaller) size, then the regressor (a 1x1 conv) and MSE."""
    from mdistiller.distillers.fitnet import FitNet
    from mdistiller.engine.cfg import build_cfg

    class Maps(torch.nn.Module):
        def __init__(self, channels, hw):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, channels, 1)
            self.hw = hw
            self.fc = torch.nn.Linear(channels, 10)

        def forward(self, x):
            f = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), self.hw)
            return self.fc(f.mean((2, 3))), {"feats": [f, f, f], "pooled_feat": f.mean((2, 3))}

    torch.manual_seed(0)
    student, teacher = Maps(4, s_hw), Maps(6, t_hw)
    cfg = build_cfg(None, ["DISTILLER.TYPE=FITNET", "DATASET.IMAGE_SIZE=16"])
    distiller = FitNet(student, teacher, cfg)
    size = (min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1]))
    assert distiller.conv_reg.conv.kernel_size == (1, 1)
    image = torch.randn(2, 3, 16, 16)
    _, losses = distiller(image=image, target=torch.tensor([0, 1]))
    with torch.no_grad():
        f_s = torch.nn.functional.adaptive_avg_pool2d(student(image)[1]["feats"][2], size)
        f_t = torch.nn.functional.adaptive_avg_pool2d(teacher(image)[1]["feats"][2], size)
        expected = ((distiller.conv_reg(f_s) - f_t) ** 2).mean() * cfg.FITNET.LOSS.FEAT_WEIGHT
    torch.testing.assert_close(losses["loss_kd"], expected)
