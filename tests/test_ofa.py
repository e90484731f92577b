"""OFA-KD: the loss against shared/specs/HETERO.md section 2.3 written out in numpy, the soft-target
class, the exit branches' shapes and layers per model family, and the gradient contract."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from mdistiller.distillers import distiller_dict
from mdistiller.distillers.ofa import ConvBranch, PatchMerging, SepConv, TokenBranch
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses.ofa import ofa_loss
from mdistiller.models import cifar_model_dict
from tests.distiller_step import train_step
from tests.tiny_models import SIZE, tiny


def reference_ofa(s: np.ndarray, t: np.ndarray, classes: np.ndarray, eps: float, T: float) -> float:
    """mean_b sum_c -w_c log p_s,c with w = p_t^eps off the target and (p_t + 1)^eps - 1 on it."""
    p_t = softmax(t / T, axis=1)
    log_p_s = log_softmax(s / T, axis=1)
    w = p_t ** eps
    rows = np.arange(len(classes))
    w[rows, classes] = (p_t[rows, classes] + 1.0) ** eps - 1.0
    return float(-(w * log_p_s).sum(1).mean())


def logits_pair(n=6, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 3, torch.randn(n, k, generator=g, dtype=torch.float64) * 3


@pytest.mark.parametrize("eps,T", [(1.0, 1.0), (1.5, 1.0), (2.0, 4.0), (0.5, 2.0)])
def test_ofa_loss_matches_formula(eps, T):
    s, t = logits_pair()
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    got = ofa_loss(s, t, y, eps, T).item()
    assert got == pytest.approx(reference_ofa(s.numpy(), t.numpy(), y.numpy(), eps, T), rel=1e-10)


def test_eps_one_is_cross_entropy_against_the_teacher():
    s, t = logits_pair(seed=1)
    y = torch.tensor([2, 2, 7, 0, 4, 8])
    p_t = softmax(t.numpy(), axis=1)
    ce = float(-(p_t * log_softmax(s.numpy(), axis=1)).sum(1).mean())
    assert ofa_loss(s, t, y, 1.0).item() == pytest.approx(ce, rel=1e-10)
    # the target class plays no part at eps = 1: (p + 1)^1 - 1 = p
    assert ofa_loss(s, t, torch.zeros(6, dtype=torch.long), 1.0).item() == pytest.approx(ce, rel=1e-10)


def test_larger_eps_weighs_the_target_class_more_when_the_teacher_is_confident():
    # a confident teacher (p_t of the target 0.9): eps 2 gives the target weight 1.9^2 - 1 = 2.61
    t = torch.log(torch.tensor([[0.9, 0.05, 0.05]], dtype=torch.float64))
    s = torch.zeros(1, 3, dtype=torch.float64)  # uniform student: -log p_s = log 3 for every class
    y = torch.tensor([0])
    expected = np.log(3) * ((1.9 ** 2 - 1) + 2 * 0.05 ** 2)
    assert ofa_loss(s, t, y, 2.0).item() == pytest.approx(expected, rel=1e-12)


def test_soft_targets_use_their_argmax_class():
    s, t = logits_pair(seed=2)
    a, b = torch.tensor([1, 4, 4, 0, 9, 2]), torch.tensor([3, 4, 8, 5, 1, 7])
    lam = torch.tensor([0.7, 0.5, 0.2, 0.9, 0.4, 0.6], dtype=torch.float64)[:, None]
    soft = lam * torch.nn.functional.one_hot(a, 10) + (1 - lam) * torch.nn.functional.one_hot(b, 10)
    soft = soft * 0.9 + 0.01  # label smoothing 0.1 over 10 classes keeps the argmax
    winners = np.array([1, 4, 8, 0, 1, 2])  # by hand: lam > 0.5 -> a, lam < 0.5 -> b, a == b -> a
    got = ofa_loss(s, t, soft, 1.7, 2.0).item()
    assert got == pytest.approx(reference_ofa(s.numpy(), t.numpy(), winners, 1.7, 2.0), rel=1e-10)


def test_ofa_loss_is_finite_in_bfloat16_with_extreme_logits():
    s = torch.tensor([[200.0, -200.0, 0.0]], dtype=torch.bfloat16)
    t = torch.tensor([[0.0, 5.0, 0.0]], dtype=torch.bfloat16)
    loss = ofa_loss(s, t, torch.tensor([1]), 1.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 100


def ofa_cfg(*opts):
    return build_cfg(None, ["DISTILLER.TYPE=OFA", f"DATASET.IMAGE_SIZE={SIZE}", *opts])


def build_ofa(student, teacher, *opts, num_classes=10):
    torch.manual_seed(0)
    return distiller_dict["OFA"](student, teacher, ofa_cfg(*opts), num_classes=num_classes, num_data=8)


# family -> (stage-1..4 (channels, side) at 32 px, pre-logit width)
FAMILIES = {
    "vit": ([(48, 8)] * 4, 48),
    "deit_distilled": ([(48, 8)] * 4, 48),
    "mixer": ([(64, 8)] * 4, 64),
    "swin": ([(24, 8), (48, 4), (96, 2), (192, 1)], 192),
    "convnext": ([(16, 8), (32, 4), (64, 2), (128, 1)], 128),
    "resnet": ([(16, 8), (32, 4), (64, 2), (128, 1)], 128),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_branch_shapes_and_layers_per_family(family):
    student, teacher = tiny(family, 10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = build_ofa(student, teacher, "OFA.TOKEN.FINAL_GRID=2")
    stages, width_s = FAMILIES[family]
    token = family in ("vit", "deit_distilled", "mixer", "swin")
    assert student.kind == ("token" if token else "cnn")  # Mixer too: its patch embedding is called "stem"
    x = torch.randn(2, 3, SIZE, SIZE)
    _, feats = student(x)
    maps = feats["feats"][-4:]
    assert [(m.shape[1], m.shape[2]) for m in maps] == stages
    prefixes = feats.get("prefix", [None] * 4)[-4:]
    for s in (1, 2, 3, 4):
        branch = distiller.branches[str(s)]
        assert branch(maps[s - 1], prefixes[s - 1]).shape == (2, 10)
        channels, side = stages[s - 1]
        if token:
            assert isinstance(branch, TokenBranch)
            merges = sum(isinstance(m, PatchMerging) for m in branch.modules())
            assert merges == max(int(np.floor(np.log2(side / 2))), 0)  # FINAL_GRID 2: 8 -> 4 -> 2
            assert len(branch.blocks) == max(4 - s, 1)
            assert branch.fc.in_features == width_s
        else:
            assert isinstance(branch, ConvBranch)
            assert sum(isinstance(m, SepConv) for m in branch.modules()) == (4 - s if s < 4 else 0)
            assert branch.fc.in_features == max(width_s, 64)  # max(D_s, D_t), resnet8 teacher D_t = 64


def test_cifar_resnet_student_branches_downsample_to_the_last_stage():
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["wrn_16_2"][0](num_classes=10)
    distiller = build_ofa(student, teacher)
    _, feats = student(torch.randn(2, 3, SIZE, SIZE))
    # resnet8 taps: stem 16x32, stage1 16x32, stage2 32x16, stage3 64x8; last four = all of them
    stage1 = distiller.branches["1"]
    out = stage1.project(feats["feats"][0])
    assert out.shape == (2, 128, 4, 4)  # three SepConvs 16 -> 32 -> 64 -> max(64, 128), 32 -> 4 px
    assert [m.op[-3].out_channels for m in stage1.project] == [32, 64, 128]
    assert distiller.branches["4"].project.kernel_size == (1, 1)


def test_token_branch_reads_the_class_token_and_merges_only_patch_tokens():
    torch.manual_seed(0)
    sizes = dict(stage=2, in_channels=8, side=8, width=8, num_classes=5, final_grid=4, num_heads=2)
    branch = TokenBranch(**sizes, with_prefix=True).eval()
    feature, prefix = torch.randn(2, 8, 8, 8), torch.randn(2, 2, 8)  # class + distillation tokens
    out = branch(feature, prefix)
    assert out.shape == (2, 5)
    changed_cls = prefix.clone()
    changed_cls[:, 0] += 1.0
    assert not torch.allclose(branch(feature, changed_cls), out)
    # without prefix tokens the readout is the mean over the blocks' output tokens
    branch = TokenBranch(**sizes).eval()
    tokens = branch.merge(feature.permute(0, 2, 3, 1)).flatten(1, 2)
    expected = branch.fc(branch.blocks(tokens).mean(dim=1))
    assert torch.allclose(branch(feature), expected)


def vit_block_parameters(d: int) -> int:
    """timm's ViT Block at mlp_ratio 4, no qkv bias: two LayerNorms (4d), qkv (3d^2), proj (d^2 + d),
    fc1 (4d^2 + 4d), fc2 (4d^2 + d)."""
    return 12 * d * d + 10 * d


def test_swin_student_branches_have_no_idle_parameter_and_the_counted_size():
    """A Swin student has no prefix tokens: every branch parameter must get a gradient (DDP with
    find_unused_parameters=False waits for any that does not). Tiny Swin at 32 px, FINAL_GRID 7:
    stages (24, 8x8), (48, 4x4), (96, 2x2), (192, 1x1), D_s = 192; no stage is over 7 on a side twice,
    so no merging: a linear map widens stages 1-3 to 192, stage 4 is as wide already; 3, 2, 1, 1
    blocks; a 192 -> 10 classifier each."""
    student, teacher = tiny("swin", 10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = build_ofa(student, teacher)
    image, target = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 7])
    train_step(distiller, {"image": image, "target": target})
    idle = [name for name, p in distiller.named_parameters() if p.requires_grad and p.grad is None]
    assert idle == []
    d = 192
    widen = sum(c * d + d for c in (24, 48, 96))
    expected = widen + (3 + 2 + 1 + 1) * vit_block_parameters(d) + 4 * (d * 10 + 10)
    assert sum(p.numel() for p in distiller.branches.parameters()) == expected


def test_patch_merging_concatenates_each_two_by_two_cell():
    merge = PatchMerging(dim=1, out_dim=4, act=torch.nn.Identity)
    merge.norm = torch.nn.Identity()
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(4))
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)  # value = 4 * row + column
    out = merge(grid)
    # cell (0, 0): rows 0-1, columns 0-1 in Swin's order (0,0), (1,0), (0,1), (1,1)
    assert out[0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    assert out[0, 1, 1].tolist() == [10.0, 14.0, 11.0, 15.0]


@pytest.mark.parametrize("student_family,teacher_family", [("resnet", "vit"), ("deit_distilled", "convnext")])
def test_one_step_gradients_reach_exactly_student_and_branches(student_family, teacher_family):
    student, teacher = tiny(student_family, 10), tiny(teacher_family, 10)
    distiller = build_ofa(student, teacher)
    image, target = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 7])
    logits, losses = train_step(distiller, {"image": image, "target": target})
    assert set(losses) == {"loss_ce", "loss_kd", "loss_ofa"}
    branch_params = sum(p.numel() for p in distiller.branches.parameters())
    assert distiller.get_extra_parameters() == branch_params > 0


def test_distiller_loss_values_against_the_formula():
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = build_ofa(student, teacher, "OFA.EPS=[1.0,1.2,1.4,1.6,1.8]", "OFA.TEMPERATURE=2.0",
                          "OFA.LOSS.KD_WEIGHT=0.5", "OFA.LOSS.CE_WEIGHT=0.3")
    distiller.train()
    image, target = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    logits, losses = distiller(image=image, target=target)
    with torch.no_grad():
        t_logits = teacher(image)[0]
    s, t = logits.detach().double().numpy(), t_logits.double().numpy()
    assert losses["loss_kd"].item() == pytest.approx(0.5 * reference_ofa(s, t, target.numpy(), 1.8, 2.0), rel=1e-5)
    ce = -log_softmax(s, axis=1)[np.arange(4), target.numpy()].mean()
    assert losses["loss_ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)


def test_branch_loss_against_the_formula_on_each_branchs_logits():
    """loss_ofa = OFA_WEIGHT * sum_s L_OFA(branch_s logits; eps_s) at T, each branch's logits read
    by a hook as the branch returns them and the sum written out with reference_ofa."""
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = build_ofa(student, teacher, "OFA.EPS=[1.0,1.2,1.4,1.6,1.8]", "OFA.TEMPERATURE=2.0",
                          "OFA.LOSS.OFA_WEIGHT=0.1")
    outputs = {}
    for stage, branch in distiller.branches.items():
        branch.register_forward_hook(lambda m, a, out, stage=stage: outputs.__setitem__(stage, out.detach()))
    distiller.train()
    image, target = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    _, losses = distiller(image=image, target=target)
    with torch.no_grad():
        t = teacher(image)[0].double().numpy()
    assert sorted(outputs) == ["1", "2", "3", "4"]
    expected = sum(reference_ofa(outputs[str(s)].double().numpy(), t, target.numpy(), eps, 2.0)
                   for s, eps in zip((1, 2, 3, 4), (1.0, 1.2, 1.4, 1.6)))
    assert losses["loss_ofa"].item() == pytest.approx(0.1 * expected, rel=1e-5)


def test_stage4_conv_bias_keeps_pytorchs_default_init_as_the_authors():
    """The authors' init_weights leaves conv biases alone: the stage-4 1x1 conv's bias is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's Conv2d default), not zero."""
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = build_ofa(student, teacher)
    convs = [m for m in distiller.branches["4"].modules() if isinstance(m, torch.nn.Conv2d)]
    biased = [m for m in convs if m.bias is not None]
    assert len(biased) == 1 and biased[0].kernel_size == (1, 1)
    bound = 1.0 / biased[0].in_channels ** 0.5
    bias = biased[0].bias.detach()
    assert bias.abs().max() <= bound and bias.abs().min() > 0 and bias.std() > bound / 4
    assert all(m.bias is None for b in ("1", "2", "3") for m in distiller.branches[b].modules()
               if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("opts,match", [
    (["OFA.EPS=[1.0,2.0]"], "OFA.EPS has 2 values"),
    (["OFA.STAGES=[0,1]"], "OFA.STAGES"),
])
def test_bad_settings_are_refused_with_the_fix(opts, match):
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["resnet8"][0](num_classes=10)
    with pytest.raises(ConfigError, match=match):
        build_ofa(student, teacher, *opts)


@pytest.mark.parametrize("config,num_classes,width,authors_total", [
    ("configs/cifar100/hetero/convnext_t_swin_p/ofa.yaml", 100, 48, 14_864_656),
    ("configs/imagenet/hetero/resnet50_swin_n/ofa.yaml", 1000, 64, 28_187_040),
])
def test_swin_p_and_n_branches_at_224_are_as_large_as_the_authors(config, num_classes, width, authors_total):
    """The paper's Swin-P (CIFAR-100) and Swin-N (ImageNet) students, built on the meta device: the
    branches the authors' distillers/ofa.py builds for them (stages (w, 56x56), (2w, 28x28),
    (4w, 14x14), (8w, 7x7), D_s = 8w; w 48 for Swin-P, 64 for Swin-N), counted from their layers:
    patch mergings of LayerNorm(4c) + a bias-free 4c -> D_s linear, 3 / 2 / 1 / 1 blocks, a
    classifier each. ``authors_total``: their code's projectors on these shapes (counted outside
    the repository from github.com/Hao840/OFAKD's distillers/ofa.py and its Swin stage_info)."""
    from mdistiller.models.external import build_external_model

    cfg = build_cfg(config)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.MODEL.STUDENT_KWARGS.items()}
    with torch.device("meta"):
        student = build_external_model(cfg.DISTILLER.STUDENT, num_classes, cfg.DATASET.IMAGE_SIZE, kwargs)
        teacher = build_external_model(cfg.DISTILLER.TEACHER, num_classes, cfg.DATASET.IMAGE_SIZE)
        distiller = distiller_dict["OFA"](student, teacher, cfg, num_classes=num_classes, num_data=8)
    d = 8 * width

    def merging(c: int) -> int:
        return 2 * 4 * c + 4 * c * d

    fc = d * num_classes + num_classes
    expected = {
        "1": merging(width) + 2 * merging(d) + 3 * vit_block_parameters(d) + fc,
        "2": merging(2 * width) + merging(d) + 2 * vit_block_parameters(d) + fc,
        "3": merging(4 * width) + vit_block_parameters(d) + fc,
        "4": vit_block_parameters(d) + fc,
    }
    counted = {stage: sum(p.numel() for p in branch.parameters()) for stage, branch in distiller.branches.items()}
    assert counted == expected
    assert sum(counted.values()) == authors_total  # docs/methods/ofa.md
