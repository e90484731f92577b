"""Every MDistiller-style YAML file under configs/{cifar100,imagenet,tiny_imagenet} loads, and the
per-pair settings are MDistiller's (METHODS.md section 1); the heterogeneous configs (teachers/,
hetero/) carry OFA-KD's and DeiT's recipes (HETERO.md sections 2.4-2.6 and 4) and valid timm models."""

import glob
import os

import pytest

from conftest import REPO_ROOT
from mdistiller.engine.cfg import CFG, build_cfg

CONFIG_DIRS = ("cifar100", "imagenet", "tiny_imagenet")
CONFIGS = sorted(p for d in CONFIG_DIRS for p in glob.glob(os.path.join(REPO_ROOT, "configs", d, "**", "*.yaml"),
                                                            recursive=True)
                 if not os.path.basename(p).startswith("_"))  # _*.yaml: bases other files include
CIFAR_PAIRS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO_ROOT, "configs", "cifar100", "kd", "*.yaml")))
SMALL_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def rel(path: str) -> str:
    return os.path.relpath(path, os.path.join(REPO_ROOT, "configs"))


def cifar(method: str, pair: str):
    return build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", method, f"{pair}.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_loads(path):
    cfg = build_cfg(path)
    assert cfg.DISTILLER.TYPE and cfg.DATASET.TYPE in CONFIG_DIRS
    assert cfg.DATASET.TYPE == rel(path).split(os.sep)[0]


def test_method_defaults_are_mdistillers():
    assert (CFG.CRD.MODE, CFG.CRD.FEAT.DIM, CFG.CRD.FEAT.STUDENT_DIM, CFG.CRD.FEAT.TEACHER_DIM) == ("exact", 128, 256, 256)
    assert (CFG.CRD.LOSS.CE_WEIGHT, CFG.CRD.LOSS.FEAT_WEIGHT) == (1.0, 0.8)
    assert (CFG.CRD.NCE.K, CFG.CRD.NCE.MOMENTUM, CFG.CRD.NCE.TEMPERATURE) == (16384, 0.5, 0.07)
    assert (CFG.DKD.CE_WEIGHT, CFG.DKD.ALPHA, CFG.DKD.BETA, CFG.DKD.T, CFG.DKD.WARMUP) == (1.0, 1.0, 8.0, 4.0, 20)
    r = CFG.REVIEWKD
    assert (r.CE_WEIGHT, r.REVIEWKD_WEIGHT, r.WARMUP_EPOCHS, r.MAX_MID_CHANNEL, r.STU_PREACT) == (1.0, 1.0, 20, 512, False)
    assert r.SHAPES == r.OUT_SHAPES == [1, 8, 16, 32] and r.IN_CHANNELS == r.OUT_CHANNELS == [64, 128, 256, 256]
    assert CFG.KD.LOGIT_STAND is False and CFG.DKD.LOGIT_STAND is False
    assert CFG.SOLVER.DOT.DELTA == 0.075


@pytest.mark.parametrize("method", ["kd", "crd", "dkd", "reviewkd"])
def test_cifar_pairs_share_mdistillers_schedule(method):
    assert len(CIFAR_PAIRS) == 11
    for pair in CIFAR_PAIRS:
        cfg = cifar(method, pair)
        assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR_DECAY_STAGES) == (240, 64, [150, 180, 210])
        assert cfg.SOLVER.WEIGHT_DECAY == 5e-4
        assert cfg.SOLVER.LR == (0.01 if cfg.DISTILLER.STUDENT in SMALL_STUDENTS else 0.05)
        assert cfg.DISTILLER.TYPE == method.upper()
        assert cfg.SOLVER.TRAINER == ("crd" if method == "crd" else "base")


def test_dkd_beta_per_pair():
    beta = {pair: cifar("dkd", pair).DKD.BETA for pair in CIFAR_PAIRS}
    assert {p for p, b in beta.items() if b == 2.0} == {"res56_res20", "res110_res32"}
    assert {p for p, b in beta.items() if b == 6.0} == {"vgg13_vgg8", "vgg13_mv2", "wrn40_2_wrn_16_2", "wrn40_2_wrn_40_1"}
    assert all(b == 8.0 for p, b in beta.items() if b not in (2.0, 6.0))


def test_reviewkd_weights():
    assert build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "reviewkd.yaml")).REVIEWKD.REVIEWKD_WEIGHT == 5.0
    weights = {pair: cifar("reviewkd", pair).REVIEWKD.REVIEWKD_WEIGHT for pair in CIFAR_PAIRS}
    assert weights["res32x4_res8x4"] == 5.0 and weights["res32x4_shuv2"] == 8.0 and weights["res56_res20"] == 0.6


def test_imagenet_settings():
    dkd = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r34_r18", "dkd.yaml"))
    assert (dkd.DKD.BETA, dkd.DKD.T, dkd.DKD.WARMUP, dkd.SOLVER.LR, dkd.SOLVER.BATCH_SIZE) == (0.5, 1.0, 1, 0.2, 512)
    dkd = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r50_mv1", "dkd.yaml"))
    assert (dkd.DKD.BETA, dkd.DKD.T, dkd.DKD.WARMUP) == (2.0, 1.0, 1)
    dot = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "r50_mv1", "dot.yaml"))
    assert (dot.SOLVER.TRAINER, dot.SOLVER.DOT.DELTA, dot.KD.TEMPERATURE) == ("dot", 0.09, 1.0)
    assert dot.DATASET.IMAGE_SIZE == 224
    tiny = build_cfg(os.path.join(REPO_ROOT, "configs", "tiny_imagenet", "dot", "r18_mv2.yaml"))
    assert (tiny.DATASET.IMAGE_SIZE, tiny.SOLVER.LR_DECAY_STAGES) == (64, [60, 120, 160])


# ---- the heterogeneous configs: cifar100/teachers/, {cifar100,imagenet}/hetero/<pair>/<method> ----

HETERO = [p for p in CONFIGS if rel(p).split(os.sep)[1] in ("teachers", "hetero")]
OFA_METHODS = {"ofa", "kd", "dkd", "dist", "fitnet"}
T = {"swin_t": "swin_tiny_patch4_window7_224", "vit_s": "vit_small_patch16_224", "mixer_b16": "mixer_b16_224",
     "convnext_t": "convnext_tiny", "deit_t": "deit_tiny_patch16_224", "resnet50": "resnet50",
     "resnet18": "resnet18", "mv2": "mobilenetv2_100", "swin_p": "swin_tiny_patch4_window7_224",
     "swin_n": "swin_tiny_patch4_window7_224", "resmlp_s12": "resmlp_12_224"}
# OFA-KD Table 2 (CIFAR-100) and Table 1 (ImageNet) pairs, HETERO.md section 3.
OFA_CIFAR_PAIRS = {("swin_t", "resnet18"), ("vit_s", "resnet18"), ("mixer_b16", "resnet18"), ("swin_t", "mv2"),
                   ("vit_s", "mv2"), ("mixer_b16", "mv2"), ("convnext_t", "deit_t"), ("mixer_b16", "deit_t"),
                   ("convnext_t", "swin_p"), ("mixer_b16", "swin_p"), ("convnext_t", "resmlp_s12"),
                   ("swin_t", "resmlp_s12")}
OFA_IMAGENET_PAIRS = {("deit_t", "resnet18"), ("swin_t", "resnet18"), ("mixer_b16", "resnet18"), ("deit_t", "mv2"),
                      ("swin_t", "mv2"), ("mixer_b16", "mv2"), ("resnet50", "deit_t"), ("convnext_t", "deit_t"),
                      ("mixer_b16", "deit_t"), ("resnet50", "swin_n"), ("convnext_t", "swin_n"),
                      ("mixer_b16", "swin_n"), ("resnet50", "resmlp_s12"), ("convnext_t", "resmlp_s12"),
                      ("swin_t", "resmlp_s12")}
# The ImageNet weights the papers used, as timm tags (HETERO.md sections 2.4, 3.1, 3.3).
PRETRAINED_TAG = {"swin_t": "ms_in1k", "vit_s": "augreg_in21k_ft_in1k", "mixer_b16": "goog_in21k_ft_in1k",
                  "convnext_t": "fb_in1k", "deit_t": "fb_in1k", "resnet50": "a1_in1k"}
# OFA-KD's released configs (HETERO.md section 2.5): (epochs, batch, optimizer, lr, end of the
# schedule, weight decay, warm-up, schedule, label smoothing, grad clip, mixup, cutmix, EMA).
RECIPES = {
    ("cifar100", "cnn"): (300, 128, "SGD", 0.05, 1e-3, 2e-3, 3, "cosine", 0.1, 0.0, 0.0, 0.0, False),
    ("cifar100", "token"): (300, 128, "AdamW", 5e-4, 1e-5, 0.05, 20, "cosine", 0.1, 5.0, 0.8, 1.0, True),
    ("imagenet", "cnn"): (100, 64, "SGD", 0.1, 0.0, 1e-4, 3, "step", 0.1, 0.0, 0.0, 0.0, False),
    ("imagenet", "token"): (300, 128, "AdamW", 5e-4, 1e-6, 0.05, 20, "cosine", 0.1, 5.0, 0.8, 1.0, True),
}


def solver_recipe(cfg):
    s = cfg.SOLVER
    return (s.EPOCHS, s.BATCH_SIZE, s.TYPE, s.LR, s.MIN_LR if s.LR_SCHEDULER == "cosine" else 0.0, s.WEIGHT_DECAY,
            s.WARMUP_EPOCHS, s.LR_SCHEDULER, s.LABEL_SMOOTHING, s.GRAD_CLIP, cfg.MIXUP.ALPHA, cfg.MIXUP.CUTMIX,
            cfg.EMA.ENABLE)


def hetero_pairs(dataset: str):
    """{(teacher, student): set of method files} from configs/<dataset>/hetero/<teacher>_<student>/."""
    pairs = {}
    for path in HETERO:
        parts = rel(path)[:-len(".yaml")].split(os.sep)
        if parts[:2] == [dataset, "hetero"] and parts[3] != "deit":
            teacher = next(t for t in T if parts[2].startswith(t + "_"))
            pairs.setdefault((teacher, parts[2][len(teacher) + 1:]), set()).add(parts[3])
    return pairs


def test_hetero_pairs_are_ofas_tables_each_with_five_methods():
    cifar, imagenet = hetero_pairs("cifar100"), hetero_pairs("imagenet")
    assert set(cifar) == OFA_CIFAR_PAIRS and set(imagenet) == OFA_IMAGENET_PAIRS
    assert all(methods == OFA_METHODS for methods in [*cifar.values(), *imagenet.values()])


@pytest.mark.parametrize("path", [p for p in HETERO if "hetero" in rel(p) and "regnety160" not in rel(p)], ids=rel)
def test_hetero_pair_follows_ofas_recipe(path):
    dataset, _, pair, method = rel(path)[:-len(".yaml")].split(os.sep)
    teacher = next(t for t in T if pair.startswith(t + "_"))
    student = pair[len(teacher) + 1:]
    cfg = build_cfg(path)
    assert cfg.DISTILLER.TYPE == method.upper() and cfg.EXPERIMENT.TAG == f"{method},{teacher},{student}"
    assert cfg.DISTILLER.STUDENT == "timm:" + T[student] and not cfg.DISTILLER.STUDENT_WEIGHTS   # from scratch
    assert cfg.DATASET.IMAGE_SIZE == 224
    kind = "cnn" if student in ("resnet18", "mv2") else "token"
    assert solver_recipe(cfg) == RECIPES[(dataset, kind)]
    if dataset == "imagenet":   # timm's ImageNet weights of the paper's teacher
        assert cfg.DISTILLER.TEACHER == f"timm:{T[teacher]}.{PRETRAINED_TAG[teacher]}"
        assert cfg.DISTILLER.TEACHER_WEIGHTS == "timm:pretrained"
    else:
        assert cfg.DISTILLER.TEACHER == "timm:" + T[teacher]
    if kind == "token":
        assert (cfg.DATASET.RAND_AUGMENT, cfg.DATASET.RANDOM_ERASING, cfg.EMA.DECAY) == \
               ("rand-m9-mstd0.5-inc1", 0.25, 0.99996)
    if student in ("swin_p", "swin_n"):   # OFA-KD's custom_model/swin_transformer.py
        kwargs = cfg.MODEL.STUDENT_KWARGS
        assert (kwargs.embed_dim, kwargs.depths, kwargs.num_heads) == \
               ({"swin_p": 48, "swin_n": 64}[student], [2, 2, 2, 2], [2, 4, 8, 16])
    # the baselines as OFA-KD's code runs them (HETERO.md section 2.6): weights 1 + 1, T 1
    assert (cfg.KD.TEMPERATURE, cfg.KD.LOSS.CE_WEIGHT, cfg.KD.LOSS.KD_WEIGHT) == (1.0, 1.0, 1.0)
    assert (cfg.DKD.CE_WEIGHT, cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T, cfg.DKD.WARMUP) == (1.0, 1.0, 2.0, 1.0, 1)
    assert (cfg.DIST.BETA, cfg.DIST.GAMMA, cfg.DIST.TEMPERATURE) == (1.0, 1.0, 1.0)
    assert cfg.OFA.EPS == ([1.5] if (dataset, pair) == ("imagenet", "deit_t_resnet18") else [1.0])
    assert cfg.OFA.LOSS.OFA_WEIGHT == (0.1 if (dataset, kind) == ("cifar100", "cnn") else 1.0)


def test_cifar_pairs_read_the_checkpoint_their_teacher_config_writes():
    from mdistiller.engine.experiment import experiment_name

    for (teacher, student) in OFA_CIFAR_PAIRS:
        pair = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "hetero", f"{teacher}_{student}", "kd.yaml"))
        fine_tune = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "teachers", f"{teacher}.yaml"))
        written = os.path.join(fine_tune.LOG.PREFIX, experiment_name(fine_tune, [])[0], "student_best")
        assert os.path.normpath(pair.DISTILLER.TEACHER_WEIGHTS) == os.path.normpath(written)
        assert fine_tune.DISTILLER.STUDENT == f"timm:{T[teacher]}.{PRETRAINED_TAG[teacher]}"
        assert pair.DISTILLER.TEACHER == fine_tune.DISTILLER.STUDENT.split(".")[0]


@pytest.mark.parametrize("path", [p for p in HETERO if "teachers" in rel(p)], ids=rel)
def test_teacher_configs_fine_tune_imagenet_weights(path):
    cfg = build_cfg(path)
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.STUDENT_WEIGHTS, cfg.DATASET.IMAGE_SIZE) == ("NONE", "timm:pretrained", 224)
    # OFA's cifar/vit_mlp.yaml with lr / 10 (issue #14): AdamW 5e-5, 300 epochs, the ViT augmentation
    assert (cfg.SOLVER.TYPE, cfg.SOLVER.LR, cfg.SOLVER.EPOCHS, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WARMUP_EPOCHS) == \
           ("AdamW", 5e-4 / 10, 300, 0.05, 20)
    assert (cfg.MIXUP.ALPHA, cfg.MIXUP.CUTMIX, cfg.DATASET.RAND_AUGMENT, cfg.SOLVER.LABEL_SMOOTHING) == \
           (0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.1)


@pytest.mark.parametrize("student", ["tiny", "small"])
def test_deit_hard_distillation_from_regnety_16gf(student):
    short = {"tiny": "deit_t", "small": "deit_s"}[student]
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", "hetero", f"regnety160_{short}", "deit.yaml"))
    assert (cfg.DISTILLER.TYPE, cfg.DEIT.TYPE, cfg.DEIT.ALPHA, cfg.DEIT.TAU) == ("DEIT", "hard", 0.5, 1.0)
    assert cfg.DISTILLER.TEACHER == "timm:regnety_160.deit_in1k" and cfg.DISTILLER.TEACHER_WEIGHTS == "timm:pretrained"
    assert cfg.DISTILLER.STUDENT == f"timm:deit_{student}_distilled_patch16_224"
    global_batch = 8 * cfg.SOLVER.BATCH_SIZE   # 8 processes: DeiT's batch of 1024
    assert global_batch == 1024 and cfg.SOLVER.LR == pytest.approx(5e-4 * global_batch / 512)
    assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WARMUP_EPOCHS, cfg.SOLVER.LR_SCHEDULER) == \
           (300, 0.05, 5, "cosine")
    assert cfg.MODEL.STUDENT_KWARGS.drop_path_rate == 0.1 and (cfg.EMA.ENABLE, cfg.EMA.DECAY) == (True, 0.99996)
    assert (cfg.MIXUP.ALPHA, cfg.MIXUP.CUTMIX, cfg.DATASET.RANDOM_ERASING, cfg.SOLVER.LABEL_SMOOTHING) == \
           (0.8, 1.0, 0.25, 0.1)


@pytest.mark.slow
def test_hetero_models_exist_and_take_their_arguments():
    """Every timm name (pretrained tags included) is timm's, and each distinct (architecture,
    arguments) builds: on the meta device, so without memory or time for weights."""
    import timm
    import torch

    from mdistiller.engine.build import check_names

    built = set()
    for path in HETERO:
        cfg = build_cfg(path)
        check_names(cfg)
        for role in ("STUDENT", "TEACHER") if cfg.DISTILLER.TYPE != "NONE" else ("STUDENT",):
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.MODEL[f"{role}_KWARGS"].items()}
            architecture = cfg.DISTILLER[role][len("timm:"):].split(".")[0]   # a tag names weights only
            built.add((architecture, tuple(sorted(kwargs.items()))))
    for name, kwargs in built:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=100, **dict(kwargs))
        assert model.num_classes == 100
    assert len(built) == 15  # DeiT-T twice: a CIFAR student at drop-path 0 (the authors'), an ImageNet teacher as timm builds it
