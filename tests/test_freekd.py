"""FreeKD: the loss against a direct computation, the relation weights, the feature hook, the prompt file,
gradient flow in stage 1 and stage 2, the configs, and one epoch through train_run."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO_ROOT
from fake_data import write_fake_cifar100
from helpers import direct_level_loss
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.distillers import distiller_dict
from mdistiller.engine.feature_hook import FeatureSite, locate_features, replace_feature
from mdistiller.distillers.frequency_prompts import build_prompts, prompt_path, prompt_record
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.prompt_learning import PromptedTeacher
from mdistiller.engine.run import run_stages, train_run
from mdistiller.errors import ConfigError
from mdistiller.frequency.prompt import FrequencyBands
from mdistiller.losses.freekd import ChannelRelation, freekd_band_loss, freekd_loss, relation_weights
from mdistiller.models import cifar_model_dict, imagenet_model_dict

PAIRS = sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "freekd")))
# Distilling with every pair's real models is slow on a CPU: two pairs by default (same channels; align conv
# plus resize), all of them with MDISTILLER_E2E=full.
DISTIL_PAIRS = PAIRS if os.environ.get("MDISTILLER_E2E") == "full" else ["res56_res20.yaml", "vgg13_mv2.yaml"]


# -- the loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("low_band", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_freekd_loss_equals_direct_computation(low_band, weighted):
    g = torch.Generator().manual_seed(0)
    t_map, s_map = torch.randn(2, 6, 9, 8, generator=g, dtype=torch.float64), torch.randn(2, 6, 9, 8, generator=g,
                                                                                          dtype=torch.float64)
    teacher, student = FrequencyBands.of(t_map, 3), FrequencyBands.of(s_map, 3)
    masks = [torch.rand(2, 3, *band.shape[-2:], generator=g, dtype=torch.float64) for band in teacher.band_sets()]
    weights = torch.rand(2, 6, generator=g, dtype=torch.float64) if weighted else None
    got = freekd_loss(masks, teacher, student, low_band, weights)
    assert got.item() == pytest.approx(direct_level_loss(masks, teacher, student, low_band, weights).item(), rel=1e-10)
    assert freekd_loss(masks, teacher, teacher, low_band, weights).item() == 0.0
    single = freekd_band_loss(masks[1], teacher.highs[0], student.highs[0])
    assert single.item() == pytest.approx(F.l1_loss(masks[1][:, :, None, None] * student.highs[0][:, None],
                                                    masks[1][:, :, None, None] * teacher.highs[0][:, None]).item(),
                                          rel=1e-10)


def test_relation_weights_shapes_range_and_normalisation():
    torch.manual_seed(0)
    relation = ChannelRelation(channels=8, deep_channels=16)
    w = relation(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4))
    assert w.shape == (2, 8) and ((w > 0) & (w < 1)).all()
    w_r = relation_weights(w, torch.rand(2, 8))
    torch.testing.assert_close(w_r.mean(dim=1), torch.ones(2))
    manual = w * 0.5
    torch.testing.assert_close(relation_weights(w, torch.full((2, 8), 0.5)), manual / manual.mean(1, keepdim=True))


# -- the feature hook ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("resnet8", "output"), ("vgg8", "output"), ("wrn_16_2", "output"),
                                        ("ImageNet:ResNet18", "input")])
def test_hook_replaces_the_last_feature_before_the_classifier(name, kind):
    torch.manual_seed(0)
    model = (imagenet_model_dict[name[9:]](pretrained=False) if name.startswith("ImageNet:")
             else cifar_model_dict[name][0](num_classes=10)).eval()
    size = 32 if name.startswith("ImageNet:") else 16
    image = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain, feats = model(image)
    last = len(feats["feats"]) - 1
    (site,) = locate_features(model, [last], size)
    assert site.kind == kind and site.relu_after == (name == "vgg8")
    handle = replace_feature(model, site, torch.zeros_like)
    with torch.no_grad():
        logits, _ = model(image)
    handle.remove()
    if name == "wrn_16_2":  # zeros -> final BN -> ReLU -> pool -> fc
        bn = model.bn1
        pooled = F.relu(bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))
        expected = model.fc(pooled).expand(2, -1)
    else:
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        expected = classifier.bias.expand(2, -1)
    torch.testing.assert_close(logits, expected)
    with torch.no_grad():  # removed: the model is back to normal
        torch.testing.assert_close(model(image)[0], plain)


def test_hook_on_a_middle_stage_feeds_the_following_stages():
    torch.manual_seed(0)
    model = cifar_model_dict["resnet8"][0](num_classes=10).eval()
    image = torch.randn(2, 3, 16, 16)
    (site,) = locate_features(model, [2], 16)
    with torch.no_grad():
        _, feats = model(image)
        handle = replace_feature(model, site, lambda f: 2 * f)
        logits, doubled = model(image)
        handle.remove()
        expected_next, _ = model.layer3(2 * feats["feats"][2])
    torch.testing.assert_close(doubled["feats"][2], 2 * feats["feats"][2])
    torch.testing.assert_close(doubled["feats"][3], expected_next)


class SkipAcross(nn.Module):
    """feats[0] is made functionally and reaches the logits through `b` and around it: only `b`'s input
    could be hooked, which would miss the skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        f1 = 2 * self.a(x)
        f2 = self.c(self.b(f1) + f1)
        pooled = f2.mean((2, 3))
        return self.fc(pooled), {"feats": [f1, f2], "pooled_feat": pooled}


@pytest.mark.parametrize("zero_head", [False, True])
def test_hook_refuses_a_feature_it_cannot_replace_everywhere(zero_head):
    """A zero-initialised head (timm's Mixer) makes the logits constant: the pooled feature still shows
    that replacing b's input misses the skip path."""
    model = SkipAcross()
    if zero_head:
        nn.init.zeros_(model.fc.weight)
    with pytest.raises(ConfigError, match="Cannot plug into SkipAcross's feats\\[0\\]"):
        locate_features(model, [0], 8)
    assert locate_features(model, [1], 8)[0] == FeatureSite("c", "output", None)


# -- stage 1 and stage 2 on small models ---------------------------------------------------------
def small_cfg(tmp_path, *opts):
    return build_cfg(None, ["DISTILLER.TYPE=FREEKD", "DISTILLER.TEACHER=resnet14", "DISTILLER.STUDENT=resnet8",
                            "DATASET.IMAGE_SIZE=16", f"LOG.PREFIX={tmp_path}", "FREEKD.TOKENS=3", *opts])


def save_prompt_file(cfg, teacher, seed=0):
    torch.manual_seed(seed)
    prompts = build_prompts([32, 64], cfg.FREEKD)
    path = prompt_path(cfg, "FREEKD")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(prompt_record(prompts, teacher, cfg, "FREEKD", [2, 3]), path)
    return prompts, path


def models(teacher_name="resnet14", student_name="resnet8"):
    torch.manual_seed(0)
    return cifar_model_dict[student_name][0](num_classes=10), cifar_model_dict[teacher_name][0](num_classes=10)


def test_stage1_trains_only_the_prompts_and_preserves_the_map_at_init(tmp_path):
    cfg = small_cfg(tmp_path)
    _, teacher = models()
    prompts = build_prompts([32, 64], cfg.FREEKD)
    with torch.no_grad():
        prompts[0].tokens.zero_()  # masks 0.5 each: sum over T=3 tokens scales every band by 1.5
        prompts[1].tokens.zero_()
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    teacher.eval()
    with torch.no_grad():  # the plain teacher with feats[2] scaled by 1.5 and then feats[3] scaled by 1.5
        f = F.relu(teacher.bn1(teacher.conv1(image)))
        f = teacher.layer2(teacher.layer1(f)[0])[0] * 1.5
        f = teacher.layer3(f)[0] * 1.5
        expected = teacher.fc(f.mean((2, 3)))
    model = PromptedTeacher(teacher, prompts, [2, 3], 16, "dice", 1.0)
    model.train()
    assert not teacher.training and model.get_learnable_parameters() == list(prompts.parameters())
    logits, losses = model(image=image, target=target)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert set(losses) == {"loss_ce", "loss_div"}
    assert losses["loss_div"].item() == pytest.approx(8.0, rel=1e-6)  # 2 levels x 4 band sets, identical masks
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    model.eval()
    torch.testing.assert_close(model(image=image), logits.detach())


@pytest.mark.parametrize("relation", [False, True])
def test_stage2_gradients_reach_student_align_and_relation_only(tmp_path, relation):
    cfg = small_cfg(tmp_path, f"FREEKD.RELATION={relation}", "FREEKD.LOW_BAND=True")
    student, teacher = models("wrn_16_2", "resnet8")  # channels 32/64 vs 64/128: align convs
    torch.manual_seed(1)
    prompts = build_prompts([64, 128], cfg.FREEKD)
    os.makedirs(os.path.dirname(prompt_path(cfg, "FREEKD")), exist_ok=True)
    torch.save(prompt_record(prompts, teacher, cfg, "FREEKD", [2, 3]), prompt_path(cfg, "FREEKD"))
    distiller = distiller_dict["FREEKD"](student, teacher, cfg, num_data=10, num_classes=10)
    distiller.train()
    for loaded, saved in zip(distiller.prompts, prompts):
        torch.testing.assert_close(loaded.tokens, saved.tokens)
        assert not loaded.tokens.requires_grad
    extra = [distiller.align] + ([distiller.relation_t, distiller.relation_s] if relation else [])
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    expected = {id(p) for m in [student] + extra for p in m.parameters()}
    assert learnable == expected
    assert distiller.get_extra_parameters() == sum(p.numel() for m in extra + [distiller.prompts] for p in m.parameters())
    logits, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"} and losses["loss_kd"].item() > 0
    sum(losses.values()).backward()
    for module in [student] + extra:
        assert all(p.grad is not None for p in module.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in distiller.prompts.parameters())


def test_stage2_loss_is_the_masked_band_loss_of_the_aligned_maps(tmp_path):
    cfg = small_cfg(tmp_path, "FREEKD.LOSS.FEAT_WEIGHT=3.0")
    student, teacher = models()
    prompts, _ = save_prompt_file(cfg, teacher)
    distiller = distiller_dict["FREEKD"](student, teacher, cfg, num_data=10, num_classes=10)
    distiller.train()
    image, target = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    _, losses = distiller(image=image, target=target, epoch=1)
    with torch.no_grad():
        s_feats, t_feats = student(image)[1]["feats"], teacher(image)[1]["feats"]
        expected = 0.0
        for k, i in enumerate([2, 3]):  # same channels and sizes: no align conv, no resize
            t_bands, s_bands = FrequencyBands.of(t_feats[i], 3), FrequencyBands.of(s_feats[i], 3)
            expected += direct_level_loss(prompts[k].masks(t_bands), t_bands, s_bands, low_band=False)
    assert isinstance(distiller.align[0], nn.Identity)
    assert losses["loss_kd"].item() == pytest.approx(3.0 * float(expected), rel=1e-5)


def test_missing_or_mismatched_prompt_file_is_a_one_line_config_error(tmp_path):
    cfg = small_cfg(tmp_path)
    student, teacher = models()
    with pytest.raises(ConfigError, match="tools/train_prompt.py --cfg") as missing:
        distiller_dict["FREEKD"](student, teacher, cfg, num_data=10, num_classes=10)
    assert "\n" not in str(missing.value) and prompt_path(cfg, "FREEKD") in str(missing.value)
    save_prompt_file(cfg, teacher)
    other = small_cfg(tmp_path, "FREEKD.TOKENS=2", f"FREEKD.PROMPT_PATH={prompt_path(cfg, 'FREEKD')}")
    with pytest.raises(ConfigError, match="was learned for"):
        distiller_dict["FREEKD"](student, teacher, other, num_data=10, num_classes=10)
    _, retrained = models()
    with torch.no_grad():
        retrained.fc.bias.add_(1.0)
    with pytest.raises(ConfigError, match="other weights of teacher resnet14"):
        distiller_dict["FREEKD"](student, retrained, cfg, num_data=10, num_classes=10)


@pytest.mark.parametrize("pair", PAIRS)
def test_cifar_configs_load_with_the_sfakd_pairs(pair):
    assert PAIRS == sorted(os.listdir(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd")))
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "freekd", pair))
    kd = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "sfakd", pair))
    assert cfg.DISTILLER.TYPE == "FREEKD" and cfg.FREEKD.NUM_STAGES == 2 and cfg.FREEKD.TOKENS == 2
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.LR) == (kd.DISTILLER.TEACHER, kd.DISTILLER.STUDENT,
                                                                              kd.SOLVER.LR)


@pytest.mark.e2e
@pytest.mark.parametrize("pair", DISTIL_PAIRS)
def test_cifar_pairs_build_and_compute_the_loss(tmp_path, pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "freekd", pair), [f"LOG.PREFIX={tmp_path}"])
    torch.manual_seed(0)
    student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=100)
    teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=100)
    with torch.no_grad():
        t_feats = teacher.eval()(torch.zeros(1, 3, 32, 32))[1]["feats"]
    indices = [len(t_feats) - 2, len(t_feats) - 1]
    prompts = build_prompts([t_feats[i].shape[1] for i in indices], cfg.FREEKD)
    os.makedirs(os.path.dirname(prompt_path(cfg, "FREEKD")), exist_ok=True)
    torch.save(prompt_record(prompts, teacher, cfg, "FREEKD", indices), prompt_path(cfg, "FREEKD"))
    distiller = distiller_dict["FREEKD"](student, teacher, cfg, num_data=10, num_classes=100).train()
    _, losses = distiller(image=torch.randn(2, 3, 32, 32), target=torch.tensor([1, 2]), epoch=1)
    assert torch.isfinite(losses["loss_kd"]) and losses["loss_kd"].item() > 0


@pytest.mark.parametrize("pair", ["r34_r18", "r50_mv1"])
def test_imagenet_configs_load(pair):
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "imagenet", pair, "freekd.yaml"))
    assert cfg.DISTILLER.TYPE == "FREEKD" and cfg.DATASET.TYPE == "imagenet" and cfg.FREEKD.PROMPT_EPOCHS == 1


@pytest.mark.slow
def test_stage1_then_one_epoch_through_train_run_on_fake_cifar100(tmp_path, monkeypatch):
    write_fake_cifar100(tmp_path / "data", num_train=24, num_test=8)
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    teacher_file = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    teacher = cifar_model_dict["wrn_16_2"][0](num_classes=100)  # small stand-in for wrn_40_2: align + upsampling
    torch.save({"model": teacher.state_dict()}, teacher_file)
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "cifar100", "freekd", "wrn40_2_shuv1.yaml"), [
        f"DATASET.ROOT={tmp_path / 'data'}", "DATASET.NUM_WORKERS=0", f"DISTILLER.TEACHER_WEIGHTS={teacher_file}",
        "DISTILLER.TEACHER=wrn_16_2",
        f"LOG.PREFIX={tmp_path / 'out'}", "LOG.PROGRESS_BAR=False", "SOLVER.EPOCHS=1", "SOLVER.BATCH_SIZE=12",
        "FREEKD.PROMPT_EPOCHS=1", "EXPERIMENT.NAME=freekd"])
    assert run_stages(cfg, verbose=False) == ["PROMPTS"]
    path = prompt_path(cfg, "FREEKD")
    record = torch.load(path, weights_only=True)
    assert record["teacher"] == "wrn_16_2" and record["feature_indices"] == [2, 3] and record["epoch"] == 1
    assert set(record["prompts"]) == {"0.tokens", "1.tokens"} and record["prompts"]["1.tokens"].shape == (4, 2, 128)
    assert 0.0 <= record["prompted_top1"] <= 100.0

    trainer = train_run(cfg, verbose=False)
    assert [type(m).__name__ for m in trainer.distiller.align] == ["Conv2d", "Conv2d"]  # ShuffleV1: 480, 960 channels
    state = torch.load(os.path.join(trainer.run_dir, "latest"), weights_only=True)
    for key, value in record["prompts"].items():  # frozen: saved as loaded
        torch.testing.assert_close(state["model"][f"prompts.{key}"], value)
    for key, value in teacher.state_dict().items():
        assert torch.equal(state["model"][f"teacher.{key}"], value), key
    metrics = open(os.path.join(trainer.run_dir, "metrics.jsonl")).read()
    assert '"loss_kd"' in metrics
