"""The authors' recipes: timm's weight-decay exclusions (SOLVER.NO_WD_1D / NO_WD_TOKENS) against
timm's rule written out here, and every config under configs/{cifar100,imagenet}/hetero/ built (its
student on the meta device) with the values of the authors' train scripts asserted: weight-decay
exclusions, schedule, warm-up start, drop-path, loss weights."""

import glob
import os

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from mdistiller.engine.build import build_role_model, check_names
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.optim import build_optimizer, no_weight_decay_names, weight_decay_groups
from tests.tiny_models import tiny

TOKENS = {"student.model.pos_embed", "student.model.cls_token", "student.model.dist_token"}


class Holder(nn.Module):
    """A distiller's layout: a student, a frozen teacher, a module of the method's own."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = tiny("deit_distilled", 10)
        self.teacher = nn.Linear(4, 4).requires_grad_(False)
        self.connector = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))


def named_groups(holder, groups):
    names = {id(p): n for n, p in holder.named_parameters()}
    return [(group.get("weight_decay"), {names[id(p)] for p in group["params"]}) for group in groups]


@pytest.mark.parametrize("no_1d, no_tokens", [(True, True), (True, False), (False, True)])
def test_weight_decay_groups_follow_timms_rule(no_1d, no_tokens):
    """No decay on a parameter with ndim <= 1 or a name ending in .bias (NO_WD_1D) and on the
    student's pos_embed / cls_token / dist_token (NO_WD_TOKENS, its no_weight_decay()); the frozen
    teacher in no group; the rest at SOLVER.WEIGHT_DECAY."""
    holder = Holder()
    solver = build_cfg(None, ["SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.NO_WD_1D", str(no_1d),
                              "SOLVER.NO_WD_TOKENS", str(no_tokens)]).SOLVER
    learnable = [p for n, p in holder.named_parameters() if not n.startswith("teacher.")]
    groups = named_groups(holder, weight_decay_groups(learnable, solver, holder))
    every = {n for n, p in holder.named_parameters() if not n.startswith("teacher.")}
    one_d = {n for n, p in holder.named_parameters() if (p.ndim <= 1 or n.endswith(".bias")) and n in every}
    free = (one_d if no_1d else set()) | (TOKENS if no_tokens else set())
    assert TOKENS <= every and "connector.1.weight" in one_d and "student.model.norm.weight" in one_d
    assert dict((frozenset(names), wd) for wd, names in groups) == {frozenset(free): 0.0,
                                                                     frozenset(every - free): 0.05}


def test_no_exclusion_is_one_group_and_names_carry_the_prefix():
    holder = Holder()
    assert no_weight_decay_names(holder) >= TOKENS
    solver = build_cfg(None, ["SOLVER.WEIGHT_DECAY", "0.05"]).SOLVER
    groups = weight_decay_groups(list(holder.student.parameters()), solver, holder)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(holder.student.parameters()))


def test_adamw_step_decays_exactly_the_decayed_group():
    """With zero gradients AdamW's step is its decoupled decay alone: p <- p (1 - lr wd) for the
    decayed parameters, unchanged for the excluded ones."""
    holder = Holder()
    solver = build_cfg(None, ["SOLVER.TYPE", "AdamW", "SOLVER.LR", "0.1", "SOLVER.WEIGHT_DECAY", "0.5",
                              "SOLVER.NO_WD_1D", "True", "SOLVER.NO_WD_TOKENS", "True"]).SOLVER
    learnable = list(holder.student.parameters())
    optimizer = build_optimizer(learnable, solver, holder)
    before = {n: p.detach().clone() for n, p in holder.student.named_parameters()}
    for p in learnable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in holder.student.named_parameters():
        excluded = p.ndim <= 1 or name.endswith(".bias") or f"student.{name}" in TOKENS
        expected = before[name] if excluded else before[name] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), expected, msg=name)


# ---- every config of the paper's pairs, as the authors' train scripts run them ----------------

HETERO = sorted(p for d in ("cifar100", "imagenet")
                for p in glob.glob(os.path.join(REPO_ROOT, "configs", d, "hetero", "**", "*.yaml"), recursive=True)
                if not os.path.basename(p).startswith("_"))
CNN_STUDENTS = ("timm:resnet18", "timm:mobilenetv2_100")
# (dataset, student kind) -> (NO_WD_1D, NO_WD_TOKENS, WARMUP_LR, drop-path of the student), from
# Hao840/OFAKD train.py (timm 0.6.5: create_optimizer_v2(distiller), --warmup-lr 1e-4), its
# configs/cifar/vit_mlp.yaml and configs/imagenet/vit_mlp.yaml (warmup_lr 5e-7, drop_path 0; CIFAR:
# the author's arguments in issue #19), and facebookresearch/deit main.py (create_optimizer(model),
# --warmup-lr 1e-6, --drop-path 0.1).
AUTHORS = {
    ("cifar100", "cnn"): (True, False, 1e-4, 0.0),
    ("cifar100", "token"): (True, False, 5e-7, 0.0),
    ("imagenet", "cnn"): (True, False, 1e-4, 0.0),
    ("imagenet", "token"): (True, False, 5e-7, 0.0),
    ("imagenet", "deit"): (True, True, 1e-6, 0.1),
}


def kind_of(path: str, cfg) -> str:
    if cfg.DISTILLER.TYPE == "DEIT":
        return "deit"
    return "cnn" if cfg.DISTILLER.STUDENT in CNN_STUDENTS else "token"


def rel(path: str) -> str:
    return os.path.relpath(path, os.path.join(REPO_ROOT, "configs"))


@pytest.mark.slow   # 137 configs merged: about 3 s here
def test_every_hetero_config_carries_the_authors_optimizer_and_schedule():
    assert len(HETERO) == 27 * 5 + 2
    for path in HETERO:
        cfg = build_cfg(path)
        dataset = rel(path).split(os.sep)[0]
        no_1d, no_tokens, warmup_lr, _ = AUTHORS[(dataset, kind_of(path, cfg))]
        solver = cfg.SOLVER
        assert (solver.NO_WD_1D, solver.NO_WD_TOKENS, solver.SCHEDULE_STYLE, solver.WARMUP_LR) == \
               (no_1d, no_tokens, "timm", pytest.approx(warmup_lr)), rel(path)
        if cfg.DISTILLER.TYPE == "DIST":   # OFA-KD's baseline: --kd-loss-weight 1, tau 1
            assert (cfg.DIST.LOSS.CE_WEIGHT, cfg.DIST.LOSS.KD_WEIGHT, cfg.DIST.TEMPERATURE) == (1.0, 1.0, 1.0)


def test_standard_pair_configs_carry_the_authors_weights():
    dist = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "dist", "res32x4_res8x4.yaml"))
    assert (dist.DIST.BETA, dist.DIST.GAMMA, dist.DIST.TEMPERATURE) == (1.0, 1.0, 4.0)   # dist_t4
    assert (dist.DIST.LOSS.CE_WEIGHT, dist.DIST.LOSS.KD_WEIGHT) == (1.0, 2.0)           # ori / kd_loss_weight
    ofa = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "ofa", "res32x4_res8x4.yaml"))
    assert (ofa.OFA.LOSS.OFA_WEIGHT, ofa.OFA.EPS, ofa.OFA.TEMPERATURE) == (0.1, [1.0], 1.0)


@pytest.mark.slow
def test_every_hetero_student_builds_with_the_authors_drop_path_and_decay_groups():
    """Each config's student built on the meta device as the run builds it: its DropPath rates are
    the authors' (0: none at all; DeiT: rising to 0.1 over the blocks) and its parameters split as
    timm splits them for the authors' script (1-D and biases free; tokens free only in DeiT's)."""
    built = {}
    for path in HETERO:
        cfg = build_cfg(path)
        check_names(cfg)
        dataset = rel(path).split(os.sep)[0]
        no_1d, no_tokens, _, drop_path = AUTHORS[(dataset, kind_of(path, cfg))]
        key = (cfg.DISTILLER.STUDENT, str(cfg.MODEL.STUDENT_KWARGS), no_1d, no_tokens)
        if key in built:
            continue
        with torch.device("meta"):
            student = build_role_model(cfg, "STUDENT", 100)
        rates = [m.drop_prob for m in student.modules() if type(m).__name__ == "DropPath"]
        assert (max(rates) if rates else 0.0) == pytest.approx(drop_path), rel(path)
        holder = nn.Module()
        holder.student = student
        groups = weight_decay_groups(list(student.parameters()), cfg.SOLVER, holder)
        free = {n for wd, names in named_groups(holder, groups) if wd == 0.0 for n in names}
        named = dict(holder.named_parameters())
        tokens = {n for n in no_weight_decay_names(holder) if n in named}
        one_d = {n for n, p in named.items() if p.ndim <= 1 or n.endswith(".bias")}
        assert free == one_d | (tokens if no_tokens else set()), rel(path)
        if "deit" in cfg.DISTILLER.STUDENT:
            assert tokens, rel(path)   # a ViT student has tokens; OFA-KD's runs decay them, DeiT's do not
        built[key] = path
    assert len(built) == 8   # ResNet18, MobileNetV2, DeiT-T, Swin-P, Swin-N, ResMLP-S12, DeiT-Ti / S distilled
