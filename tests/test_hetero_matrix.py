"""Every registered classification method on heterogeneous pairs of tiny models at 32x32: it trains
one step (finite losses, gradients on exactly the parameters that learn) or refuses at build time
with one IncompatibleModelError line naming the method. FREEKD and AFPKD first run their stage 1 for
real on the pair's teacher (the prompts learned inside it by the engine's prompt trainer).

Pairs (HETERO.md section 7 sizes): CNN -> ViT, ViT -> CNN, Swin -> CNN, CNN -> MLP-Mixer,
ConvNeXt -> DeiT (distilled). The CIFAR-zoo resnet8 and timm's resnet10t are the CNNs. The quick
form runs every method on CNN -> ViT; the other pairs are marked slow.
docs/heterogeneous.md holds the table this test asserts.
"""

import copy
from typing import Dict

import pytest
import torch
import torch.nn.functional as F

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError, IncompatibleModelError
from mdistiller.models import cifar_model_dict
from mdistiller.distillers.frequency_prompts import build_prompts
from tests.family_sweep import step_and_check
from tests.prompt_files import learn_prompt_file, write_prompt_file
from tests.tiny_models import SIZE, tiny

NUM_CLASSES, BATCH = 10, 4
FAMILY = {"vit": "vit", "deit": "deit_distilled", "swin": "swin", "convnext": "convnext", "resnet10t": "resnet",
          "mixer": "mixer"}  # this file's keys -> tests/tiny_models.py families
QUICK_PAIRS = [("resnet8", "vit")]
SLOW_PAIRS = [("vit", "resnet8"), ("swin", "resnet8"), ("resnet10t", "mixer"), ("convnext", "deit")]
PROMPT_METHODS = ("FREEKD", "AFPKD")  # stage 1 learns prompts inside the teacher, stage 2 reads their file


def build_model(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if key == "resnet8":
        return cifar_model_dict["resnet8"][0](num_classes=NUM_CLASSES)
    return tiny(FAMILY[key], NUM_CLASSES)


@pytest.fixture(scope="module")
def models() -> Dict[str, torch.nn.Module]:
    """Each tiny model built once per module; every case deep-copies the ones it uses."""
    keys = {key for pair in QUICK_PAIRS + SLOW_PAIRS for key in pair}
    return {key: build_model(key) for key in keys}


ONE_BY_ONE = ("swin", "convnext", "resnet10t")  # last stage 1x1 at 32x32


def refusal(method: str, teacher: str, student: str):
    """(error type, words the one-line refusal must hold), or None where the method must work."""
    if method == "CANKD" and (teacher in ONE_BY_ONE or student in ONE_BY_ONE):
        return ConfigError, "CANKD instance-normalises the last-stage maps, which are 1x1"
    words = incompatibility(method, teacher, student)
    return None if words is None else (IncompatibleModelError, words)


def incompatibility(method: str, teacher: str, student: str):
    """The words of an IncompatibleModelError refusal, or None."""
    if method == "OFD":
        return "pre-activation"  # every pair has a timm model, none of which gives BatchNorm pre-activations
    if method == "CATKD":
        return "globally average-pooled map"  # ViT/DeiT read a class token; Swin, Mixer pool tokens; ConvNeXt normalises
    if method == "DEIT" and student != "deit":
        return "distillation token"
    return None


def batch_for(method: str, cfg) -> dict:
    generator = torch.Generator().manual_seed(1)
    batch = dict(image=torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
                 target=torch.tensor([0, 1, 2, 3]), epoch=1, index=torch.arange(BATCH))
    if method == "CRD":
        batch["contrastive_index"] = torch.randint(0, 64, (BATCH, 1 + cfg.CRD.NCE.K), generator=generator)
    return batch


def run_stage1(cfg, teacher) -> None:
    """FREEKD / AFPKD's stage 1 for real: prompts learned inside the teacher by the engine's prompt
    trainer, one epoch of one step on the batch, written where stage 2 reads them. AdamW's first step
    moves every token with a gradient by the learning rate exactly, from the seeded initial prompts."""
    method = cfg.DISTILLER.TYPE
    batch = batch_for(method, cfg)
    stage1 = cfg.clone()
    stage1.defrost()
    stage1[method].PROMPT_EPOCHS = 1
    torch.manual_seed(3)
    record = learn_prompt_file(stage1, teacher, batch["image"], batch["target"])
    torch.manual_seed(3)
    initial = build_prompts(record["channels"], cfg[method]).state_dict()
    assert record["epoch"] == 1 and set(record["prompts"]) == set(initial)
    for key, learned in record["prompts"].items():
        step = (learned - initial[key]).abs()
        torch.testing.assert_close(step.max(), torch.tensor(cfg[method].PROMPT_LR), rtol=1e-3, atol=0)


def check_method_on_pair(method: str, teacher_key: str, student_key: str, models, tmp_path) -> None:
    teacher, student = copy.deepcopy(models[teacher_key]), copy.deepcopy(models[student_key])
    cfg = build_cfg(None, [f"DISTILLER.TYPE={method}", f"DATASET.IMAGE_SIZE={SIZE}", f"LOG.PREFIX={tmp_path}"])
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    if method in PROMPT_METHODS:
        run_stage1(cfg, teacher)
    expected_refusal = refusal(method, teacher_key, student_key)
    if expected_refusal is not None:
        error, words = expected_refusal
        with pytest.raises(error, match=words) as refused:
            distiller_dict[method](student, teacher, cfg, num_classes=NUM_CLASSES, num_data=64)
        assert "\n" not in str(refused.value) and method in str(refused.value)
        return

    torch.manual_seed(0)
    distiller = distiller_dict[method](student, teacher, cfg, num_classes=NUM_CLASSES, num_data=64)
    # Exactly the learnable parameters get a gradient; a method's declared exceptions (the student's
    # own head under SFAKD's teacher head, CAT-KD's frozen classifier) have requires_grad off.
    learnable = {id(p) for p in distiller.get_learnable_parameters() if p.requires_grad}
    assert {id(p) for p in student.parameters() if p.requires_grad} <= learnable
    step_and_check(distiller, batch_for(method, cfg))
    for key, value in teacher.state_dict().items():  # stage 1 too leaves the teacher as it was
        assert torch.equal(value, teacher_before[key]), key


METHODS = sorted(distiller_dict)


@pytest.mark.parametrize("teacher_key,student_key", QUICK_PAIRS)
@pytest.mark.parametrize("method", METHODS)
def test_method_on_quick_pair(method, teacher_key, student_key, models, tmp_path):
    check_method_on_pair(method, teacher_key, student_key, models, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("teacher_key,student_key", SLOW_PAIRS)
@pytest.mark.parametrize("method", METHODS)
def test_method_on_slow_pair(method, teacher_key, student_key, models, tmp_path):
    check_method_on_pair(method, teacher_key, student_key, models, tmp_path)


def freekd_aligned_maps(cfg, teacher, student):
    """FREEKD built on the pair (its prompt file written first) and run on two images: the teacher's
    features, the teacher's and student's maps as FREEKD compares them, and the student's last two
    maps through FREEKD's align convs alone."""
    write_prompt_file(cfg, teacher)
    distiller = distiller_dict["FREEKD"](student, teacher, cfg, num_classes=NUM_CLASSES, num_data=64)
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, feats_t = teacher(image)
        _, feats_s = student(image)
        teacher_maps, student_maps = distiller.aligned_maps(feats_t, feats_s)
        aligned = [align(feats_s["feats"][i]) for align, i in zip(distiller.align, [2, 3])]
    return feats_t, teacher_maps, student_maps, aligned


@pytest.mark.parametrize("upsample", [True, False])
def test_freekd_pools_the_larger_map_down_unless_told_to_upsample(upsample, models, tmp_path):
    """resnet8 -> ViT: the teacher's last two maps are 16x16 and 8x8, the student's ViT grid 8x8.
    UPSAMPLE_STUDENT False pools the teacher's 16x16 map to 8x8 and leaves the student's alone."""
    teacher, student = copy.deepcopy(models["resnet8"]), copy.deepcopy(models["vit"])
    cfg = build_cfg(None, ["DISTILLER.TYPE=FREEKD", f"DATASET.IMAGE_SIZE={SIZE}", f"LOG.PREFIX={tmp_path}",
                           f"FREEKD.UPSAMPLE_STUDENT={upsample}"])
    feats_t, teacher_maps, student_maps, aligned = freekd_aligned_maps(cfg, teacher, student)
    assert [tuple(t.shape[-2:]) for t in feats_t["feats"][2:]] == [(16, 16), (8, 8)]
    if upsample:
        torch.testing.assert_close(teacher_maps[0], feats_t["feats"][2])
        torch.testing.assert_close(student_maps[0], F.interpolate(aligned[0], size=(16, 16), mode="bilinear"))
    else:
        t = feats_t["feats"][2]
        by_hand = t.reshape(2, t.shape[1], 8, 2, 8, 2).mean(dim=(3, 5))  # 2x2 average pooling
        torch.testing.assert_close(teacher_maps[0], by_hand)
        torch.testing.assert_close(student_maps[0], aligned[0])
    torch.testing.assert_close(teacher_maps[1], feats_t["feats"][3])
    torch.testing.assert_close(student_maps[1], aligned[1])


def test_freekd_pools_a_level_more_than_twice_apart_instead_of_upsampling(tmp_path):
    """resnet8 -> tiny Swin: the teacher's last two maps are 16x16 and 8x8, the Swin student's 2x2
    and 1x1 (8x apart). Even with UPSAMPLE_STUDENT True (the default) nothing is upsampled: each
    teacher map is average-pooled to the student's size (8x8 blocks, by hand) and the student's
    aligned map is left as it is."""
    teacher, student = build_model("resnet8"), build_model("swin")
    cfg = build_cfg(None, ["DISTILLER.TYPE=FREEKD", f"DATASET.IMAGE_SIZE={SIZE}", f"LOG.PREFIX={tmp_path}"])
    assert cfg.FREEKD.UPSAMPLE_STUDENT
    feats_t, teacher_maps, student_maps, aligned = freekd_aligned_maps(cfg, teacher, student)
    for level, (t, side) in enumerate(zip(feats_t["feats"][2:], (2, 1))):
        n, c, h, _ = t.shape
        block = h // side
        by_hand = t.reshape(n, c, side, block, side, block).mean(dim=(3, 5))
        torch.testing.assert_close(teacher_maps[level], by_hand)
        torch.testing.assert_close(student_maps[level], aligned[level])
