"""The transformer recipe in the one trainer: mixup / cutmix / label smoothing before the distiller,
SOLVER.GRAD_CLIP, the student's EMA (values, files, exact resume), and the loaders' side (even
batches under mixup). Tiny digits runs at 8x8, a step or two each."""

import signal
from itertools import islice

import pytest
import torch
import torch.nn.functional as F

from mdistiller.dataset import build_datasets, build_loaders
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import ConfigError, TrainingStopped
from mdistiller.losses.dkd import dkd_loss

from helpers import STUDENT_CFG, assert_same_state, kd_trainer, make_trainer, signal_at_call

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def one_batch_trainer(trainer, batches: int = 1):
    """`trainer` on its first `batches` training batches and one validation batch."""
    trainer.train_loader = list(islice(iter(trainer.train_loader), batches))
    trainer.val_loader = list(islice(iter(trainer.val_loader), 1))
    return trainer


def capture_inputs(module, seen):
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))


def test_student_and_teacher_see_the_same_mixed_batch(tmp_path):
    trainer = one_batch_trainer(kd_trainer(tmp_path, "mix", 1, ("MIXUP.ALPHA=1.0", "SOLVER.BATCH_SIZE=16")))
    raw, passed, student_in, teacher_in = [], [], [], []
    to_device, model = trainer.to_device, trainer.train_model

    def recording_to_device(batch):
        image, target, extra = to_device(batch)
        raw.append((image.clone(), target.clone()))
        return image, target, extra

    def recording_model(**kwargs):
        passed.append((kwargs["image"].clone(), kwargs["target"].clone()))
        return model(**kwargs)

    trainer.to_device, trainer.train_model = recording_to_device, recording_model
    capture_inputs(trainer.distiller.student, student_in)
    capture_inputs(trainer.distiller.teacher, teacher_in)
    trainer.train_epoch(1)

    (x, y), (mixed, soft) = raw[0], passed[0]
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16, dtype=soft.dtype))
    i = int(torch.nonzero(y != y.flip(0))[0])
    lam = float(soft[i, y[i]])
    assert 0.0 < lam < 1.0
    expected_target = lam * F.one_hot(y, 10) + (1 - lam) * F.one_hot(y.flip(0), 10)
    torch.testing.assert_close(soft, expected_target.to(soft.dtype))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    student_batch = [t for t in student_in if t.shape[0] == 16]
    assert len(student_batch) == 1 and len(teacher_in) == 1
    assert torch.equal(student_batch[0], mixed) and torch.equal(teacher_in[0], mixed)


def test_label_smoothing_alone_gives_smoothed_one_hot_targets(tmp_path):
    trainer = one_batch_trainer(make_trainer(tmp_path, "SOLVER.LABEL_SMOOTHING=0.1"))
    image, target, _ = trainer.to_device(trainer.train_loader[0])
    same, soft = trainer.mix(image.clone(), target)
    assert torch.equal(same, image)
    torch.testing.assert_close(soft, 0.9 * F.one_hot(target, 10).float() + 0.1 / 10)


def test_odd_batch_is_refused_and_mixup_loaders_drop_the_odd_last_batch(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE 7 is odd"):
        make_trainer(tmp_path, "MIXUP.CUTMIX=1.0", "SOLVER.BATCH_SIZE=7")
    for fast in (True, False):
        cfg = build_cfg(STUDENT_CFG, ["DATASET.IMAGE_SIZE=8", "MIXUP.ALPHA=0.8", "SOLVER.BATCH_SIZE=10",
                                      f"DATASET.FAST_AUG={fast}"])
        train_set, val_set, _ = build_datasets(cfg)
        assert len(train_set) % 10 != 0
        train_loader, _ = build_loaders(cfg, train_set, val_set)
        sizes = [batch[0].shape[0] for batch in train_loader]
        assert sizes == [10] * (len(train_set) // 10)


def test_dkd_takes_the_argmax_class_of_a_soft_target():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    hard = torch.tensor([0, 1, 2, 3, 4, 0])
    soft = 0.7 * F.one_hot(hard, 5) + 0.3 * F.one_hot(hard.flip(0), 5)
    assert torch.equal(dkd_loss(student, teacher, soft, 1.0, 8.0, 4.0), dkd_loss(student, teacher, hard, 1.0, 8.0, 4.0))


def grad_norm(parameters) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters
                                                 if p.grad is not None]))


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_grad_clip_bounds_the_learnable_gradient_norm(tmp_path, clip):
    trainer = one_batch_trainer(make_trainer(tmp_path, f"SOLVER.GRAD_CLIP={clip}"))
    params, norms = trainer.distiller.get_learnable_parameters(), []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        norms.append(float(grad_norm(params)))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.distiller.train()
    image, target, extra = trainer.to_device(trainer.train_loader[0])
    trainer.train_iter(image, target, extra, 1, 0)
    if clip:
        assert norms == [pytest.approx(clip, rel=1e-4)]
    else:
        assert norms[0] > 0.05  # what the clipped run bounds is larger than its bound


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_decay_formula(tmp_path, warmup):
    decay = 0.9
    trainer = one_batch_trainer(make_trainer(tmp_path, "EMA.ENABLE=True", f"EMA.DECAY={decay}",
                                             f"EMA.WARMUP={warmup}"), batches=3)
    student = trainer.distiller.student
    expected = {k: v.clone().double() for k, v in student.state_dict().items()}
    trainer.distiller.train()
    for n, batch in enumerate(trainer.train_loader, start=1):
        trainer.train_iter(*trainer.to_device(batch), 1, n - 1)
        d = min(decay, 1 - n ** (-2 / 3)) if warmup else decay
        for key, value in student.state_dict().items():
            if value.is_floating_point():
                expected[key] = d * expected[key] + (1 - d) * value.double()
            else:
                expected[key] = value.clone().double()
    ema = trainer.ema.module.state_dict()
    assert trainer.ema_steps == 3
    for key, value in expected.items():
        torch.testing.assert_close(ema[key].double(), value, rtol=1e-5, atol=1e-6, msg=key)
    moved = [k for k, v in student.state_dict().items() if v.is_floating_point() and not torch.equal(v, ema[k])]
    assert moved  # the average is not the student itself


def test_ema_is_validated_logged_and_saved_beside_the_raw_student(tmp_path, capsys):
    trainer = one_batch_trainer(make_trainer(tmp_path, "EMA.ENABLE=True", "EMA.DECAY=0.5", "SOLVER.EPOCHS=1"))
    trainer.train()
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith("Epoch 1:")][0]
    assert "EMA test top1" in line and "student_best: raw weights, student_ema_best: EMA weights" in line
    run = tmp_path / "run"
    raw, ema = load_checkpoint(str(run / "student_best")), load_checkpoint(str(run / "student_ema_best"))
    assert raw["weights"] == "raw" and ema["weights"] == "ema"
    for key, value in trainer.distiller.student.state_dict().items():
        assert torch.equal(raw["model"][key], value)
        assert torch.equal(ema["model"][key], trainer.ema.module.state_dict()[key])
    latest = load_checkpoint(str(run / "latest"))
    assert latest["ema_steps"] == 1 and latest["best_acc_ema"] == ema["acc"]
    lines = (run / "metrics.jsonl").read_text()
    assert '"test_acc_ema"' in lines


# A heterogeneous pair at the 8 px of these runs: the CNN teacher into a timm ViT (2 px patches, a
# 4x4 token grid, one block), with its class token and dropout-free blocks.
VIT_STUDENT = ("DISTILLER.STUDENT=timm:vit_tiny_patch16_224", "MODEL.STUDENT_KWARGS.patch_size=2",
               "MODEL.STUDENT_KWARGS.embed_dim=16", "MODEL.STUDENT_KWARGS.depth=1", "MODEL.STUDENT_KWARGS.num_heads=2")


@pytest.mark.slow
@pytest.mark.parametrize("pair", [(), VIT_STUDENT], ids=["cnn_to_cnn", "cnn_to_vit"])
def test_resume_with_ema_and_mixup_equals_straight_run(tmp_path, pair):
    opts = ("DATASET.FAST_AUG=True", "EMA.ENABLE=True", "EMA.DECAY=0.9", "MIXUP.ALPHA=0.8", "MIXUP.CUTMIX=1.0",
            *pair)
    straight = kd_trainer(tmp_path, "straight", 2, opts)
    straight.train()
    steps = len(straight.train_loader)
    kd_trainer(tmp_path, "split", 1, opts).train()
    extended = kd_trainer(tmp_path, "split", 2, opts)
    signal_at_call(extended, steps // 2)
    with pytest.raises(TrainingStopped) as stopped:
        extended.train(resume=True)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(str(tmp_path / "split" / "latest"))["progress"]["step"] == steps // 2
    kd_trainer(tmp_path, "split", 2, opts).train(resume=True)
    a = load_checkpoint(str(tmp_path / "straight" / "latest"))
    b = load_checkpoint(str(tmp_path / "split" / "latest"))
    assert_same_state(a, b)
    assert a["ema_steps"] == b["ema_steps"] == 2 * steps
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


# -- ImageFolder sets: RandAugment, random erasing, interpolation (mdistiller/dataset/augment.py)
def imagefolder_cfg(*opts):
    return build_cfg(None, ["DATASET.TYPE=imagenet", *opts])


def test_random_erasing_replaces_one_rectangle_of_the_normalised_image():
    from PIL import Image

    from mdistiller.dataset.imagenet import imagenet_train_transform

    image = Image.fromarray(torch.randint(0, 256, (48, 40, 3), dtype=torch.uint8).numpy())
    plain = imagenet_train_transform(32, imagefolder_cfg())
    erased = imagenet_train_transform(32, imagefolder_cfg("DATASET.RANDOM_ERASING=1.0"))
    torch.manual_seed(5)
    a = plain(image)
    torch.manual_seed(5)
    b = erased(image)
    changed = (a != b).any(0)
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed.any()
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all() and int(changed.sum()) == box.numel() < 32 * 32  # one rectangle, not the whole image


def test_rand_augment_and_interpolation_keys():
    from timm.data.auto_augment import RandAugment
    from torchvision import transforms

    from mdistiller.dataset.imagenet import imagenet_train_transform, imagenet_val_transform

    cfg = imagefolder_cfg("DATASET.RAND_AUGMENT=rand-m9-mstd0.5-inc1", "DATASET.INTERPOLATION=bicubic")
    steps = imagenet_train_transform(224, cfg).transforms
    assert [type(s) for s in steps] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip, RandAugment,
                                        transforms.ToTensor, transforms.Normalize]
    assert steps[0].interpolation == transforms.InterpolationMode.BICUBIC
    assert imagenet_val_transform(160, cfg).transforms[0].size == 160 * 256 // 224
    with pytest.raises(ConfigError, match="rand-m9-mstd0.5-inc1"):
        imagenet_train_transform(224, imagefolder_cfg("DATASET.RAND_AUGMENT=m9"))
    with pytest.raises(ConfigError, match="bilinear, bicubic"):
        imagenet_train_transform(224, imagefolder_cfg("DATASET.INTERPOLATION=nearest"))


def dot_trainer(tmp_path, *opts):
    from mdistiller.dataset import get_dataset
    from mdistiller.engine.build import build_distiller
    from mdistiller.engine.trainer import trainer_dict

    cfg = build_cfg(STUDENT_CFG, [f"LOG.PREFIX={tmp_path}", "SOLVER.AMP=False", "DATASET.IMAGE_SIZE=8",
                                  "SOLVER.TRAINER=dot", *opts])
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    return trainer_dict["dot"]("dot", build_distiller(cfg, num_data, num_classes), train_loader, val_loader, cfg)


def test_dot_trainer_updates_the_ema_and_refuses_grad_clip(tmp_path):
    trainer = one_batch_trainer(dot_trainer(tmp_path, "EMA.ENABLE=True", "EMA.DECAY=0.5"))
    before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    trainer.distiller.train()
    trainer.train_iter(*trainer.to_device(trainer.train_loader[0]), 1, 0)
    student = trainer.distiller.student.state_dict()
    assert trainer.ema_steps == 1
    for key, value in trainer.ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * before[key] + 0.5 * student[key])
    with pytest.raises(ConfigError, match="set SOLVER.GRAD_CLIP 0"):
        dot_trainer(tmp_path, "SOLVER.GRAD_CLIP=1.0")


def test_prompt_stage_trains_without_the_students_recipe():
    from mdistiller.engine.prompt_learning import prompt_learning_cfg

    cfg = build_cfg(None, ["DISTILLER.TYPE=FREEKD", "EMA.ENABLE=True", "MIXUP.ALPHA=0.8", "MIXUP.CUTMIX=1.0",
                           "SOLVER.LABEL_SMOOTHING=0.1", "SOLVER.GRAD_CLIP=1.0"])
    stage = prompt_learning_cfg(cfg, "FREEKD")
    assert (stage.EMA.ENABLE, stage.MIXUP.ALPHA, stage.MIXUP.CUTMIX, stage.SOLVER.LABEL_SMOOTHING,
            stage.SOLVER.GRAD_CLIP) == (False, 0.0, 0.0, 0.0, 0.0)
    assert cfg.EMA.ENABLE and cfg.MIXUP.ALPHA == 0.8  # the run's own config is untouched


def test_cifar100_takes_rand_augment_and_random_erasing_through_the_dataloader(tmp_path, monkeypatch):
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from fake_data import write_fake_cifar100
    from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
    from mdistiller.dataset.fast_aug import InMemoryLoader

    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    write_fake_cifar100(tmp_path, num_train=4, num_test=2)
    plain = build_cfg(None, [f"DATASET.ROOT={tmp_path}", "DATASET.IMAGE_SIZE=64", "SOLVER.BATCH_SIZE=2",
                             "DATASET.NUM_WORKERS=0"])
    recipe = build_cfg(None, [f"DATASET.ROOT={tmp_path}", "DATASET.IMAGE_SIZE=64", "SOLVER.BATCH_SIZE=2",
                              "DATASET.NUM_WORKERS=0", "DATASET.RAND_AUGMENT=rand-m9-mstd0.5-inc1",
                              "DATASET.RANDOM_ERASING=0.25"])
    train_set = build_datasets(recipe)[0]
    steps = train_set.dataset.transform.transforms
    assert [type(s) for s in steps] == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.Resize,
                                        RandAugment, transforms.ToTensor, transforms.Normalize, RandomErasing]
    assert steps[-1].probability == 0.25
    assert isinstance(build_loaders(plain, *build_datasets(plain)[:2])[0], InMemoryLoader)
    loader = build_loaders(recipe, *build_datasets(recipe)[:2])[0]
    assert isinstance(loader, DataLoader)
    assert next(iter(loader))[0].shape == (2, 3, 64, 64)
