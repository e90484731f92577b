"""mdistiller.dataset through the real get_dataset(cfg) path, on tiny copies in the real formats."""

import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from yacs.config import CfgNode

from fake_data import (
    IMAGENET_WNIDS,
    TINY_IMAGENET_WNIDS,
    write_fake_cifar100,
    write_fake_imagenet,
    write_fake_tiny_imagenet,
)
from mdistiller.dataset import (
    InstanceDataset,
    build_datasets,
    build_loaders,
    dataset_registry,
    digits_split,
    get_dataset,
    reorganize_val,
)
from mdistiller.dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD, SKIP_MD5_ENV
from mdistiller.dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mdistiller.dataset.tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from mdistiller.errors import DatasetNotFoundError, UnknownNameError, UserError


def make_cfg(dataset_type: str, root, **dataset) -> CfgNode:
    cfg = CfgNode()
    cfg.DATASET = CfgNode()
    cfg.DATASET.TYPE = dataset_type
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.DOWNLOAD = False
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.IMAGE_SIZE = 32
    cfg.DATASET.TEST = CfgNode()
    cfg.DATASET.TEST.BATCH_SIZE = 64
    cfg.SOLVER = CfgNode()
    cfg.SOLVER.BATCH_SIZE = 8
    cfg.EXPERIMENT = CfgNode()
    cfg.EXPERIMENT.SEED = 0
    for key, value in dataset.items():
        setattr(cfg.DATASET, key, value)
    return cfg


def normalised(images_hwc_uint8: np.ndarray, mean, std) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, normalised like ToTensor + Normalize."""
    scaled = images_hwc_uint8.astype(np.float64) / 255.0
    scaled = (scaled - np.asarray(mean)) / np.asarray(std)
    return scaled.transpose(0, 3, 1, 2)


def check_train_batch(batch, batch_size: int, shape, num_classes: int) -> None:
    image, target, index = batch
    assert image.dtype == torch.float32 and tuple(image.shape) == (batch_size, *shape)
    assert target.dtype == torch.int64 and index.dtype == torch.int64
    assert 0 <= target.min() and target.max() < num_classes


# --------------------------------------------------------------------------------------- CIFAR-100


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    return tmp_path, write_fake_cifar100(tmp_path, num_train=20, num_test=10)


def test_cifar100_items_and_shapes(fake_cifar):
    root, written = fake_cifar
    train_loader, val_loader, num_data, num_classes = get_dataset(make_cfg("cifar100", root))
    assert (num_data, num_classes) == (20, 100)
    assert len(train_loader.dataset) == 20 and len(val_loader.dataset) == 10

    image, target, index = train_loader.dataset[3]
    assert tuple(image.shape) == (3, 32, 32) and target == written["train"][1][3] and index == 3
    val_item = val_loader.dataset[0]
    assert len(val_item) == 2

    check_train_batch(next(iter(train_loader)), 8, (3, 32, 32), 100)
    targets = torch.cat([batch[1] for batch in train_loader])
    assert sorted(targets.tolist()) == sorted(written["train"][1].tolist())  # drop_last=False


def test_cifar100_val_normalisation_matches_numpy(fake_cifar):
    root, written = fake_cifar
    _, val_loader, _, _ = get_dataset(make_cfg("cifar100", root))
    images, targets = next(iter(val_loader))
    expected = normalised(written["test"][0], CIFAR100_MEAN, CIFAR100_STD)
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        images.mean(dim=(0, 2, 3)).numpy(), expected.mean(axis=(0, 2, 3)), atol=1e-5
    )
    np.testing.assert_allclose(
        images.std(dim=(0, 2, 3)).numpy(), expected.std(axis=(0, 2, 3), ddof=1), atol=1e-4
    )
    assert targets.tolist() == written["test"][1].tolist()


def test_cifar100_train_augmentation_keeps_pixels(fake_cifar):
    root, written = fake_cifar
    train_set, _, _ = build_datasets(make_cfg("cifar100", root))
    torch.manual_seed(0)
    image, _, _ = train_set[0]
    # Every value is either padding (normalised black) or a pixel of the original image.
    source = normalised(written["train"][0][:1], CIFAR100_MEAN, CIFAR100_STD)[0]
    black = (-np.asarray(CIFAR100_MEAN) / np.asarray(CIFAR100_STD))
    for channel in range(3):
        allowed = np.append(np.unique(source[channel]), black[channel])
        values = image[channel].numpy().ravel()
        nearest = np.abs(values[:, None] - allowed[None, :]).min(axis=1)
        assert nearest.max() < 1e-5


def test_cifar100_md5_bypass_needs_the_variable(tmp_path, monkeypatch):
    write_fake_cifar100(tmp_path)
    monkeypatch.delenv(SKIP_MD5_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError) as error:
        get_dataset(make_cfg("cifar100", tmp_path))
    message = str(error.value)
    assert "md5" in message and str(tmp_path / "cifar-100-python") in message
    assert "\n" not in message and SKIP_MD5_ENV not in message

    monkeypatch.setenv(SKIP_MD5_ENV, "0")
    with pytest.raises(DatasetNotFoundError):
        get_dataset(make_cfg("cifar100", tmp_path))

    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    assert get_dataset(make_cfg("cifar100", tmp_path))[2] == 20


def test_cifar100_md5_bypass_still_requires_loadable_files(fake_cifar):
    root, _ = fake_cifar
    folder = root / "cifar-100-python"
    (folder / "meta").unlink()
    with pytest.raises(DatasetNotFoundError, match="no file 'meta'"):
        get_dataset(make_cfg("cifar100", root))

    write_fake_cifar100(root)
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="cannot be read"):
        get_dataset(make_cfg("cifar100", root))


def test_cifar100_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    with pytest.raises(DatasetNotFoundError) as error:
        get_dataset(make_cfg("cifar100", tmp_path / "data"))
    message = str(error.value)
    assert str(tmp_path / "data" / "cifar-100-python") in message
    assert "DATASET.DOWNLOAD True" in message and "\n" not in message
    assert isinstance(error.value, UserError)


def test_cifar100_relative_root_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    write_fake_cifar100(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert get_dataset(make_cfg("cifar100", "data"))[2] == 20


def test_cifar100_download_switch(fake_cifar, tmp_path, monkeypatch):
    root, _ = fake_cifar
    # Files already present: torchvision's download() sees them and does not touch the network.
    assert get_dataset(make_cfg("cifar100", root, DOWNLOAD=True))[2] == 20

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    empty = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError, match="download failed") as error:
        get_dataset(make_cfg("cifar100", empty, DOWNLOAD=True))
    assert calls and str(empty / "cifar-100-python") in str(error.value)


def test_fake_cifar_pickles_have_the_official_keys(tmp_path):
    write_fake_cifar100(tmp_path, num_train=4, num_test=2)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    assert set(entry) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (4, 3072)


# ------------------------------------------------------------------------- ImageNet, Tiny-ImageNet


def test_imagenet_items_shapes_and_normalisation(tmp_path):
    folder = write_fake_imagenet(tmp_path, train_per_class=3, val_per_class=2, size=(48, 40))
    cfg = make_cfg("imagenet", tmp_path, IMAGE_SIZE=224)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    assert (num_data, num_classes) == (9, len(IMAGENET_WNIDS))
    assert train_loader.dataset.classes == sorted(IMAGENET_WNIDS)
    check_train_batch(next(iter(train_loader)), 8, (3, 224, 224), num_classes)

    images, targets = next(iter(val_loader))
    assert tuple(images.shape) == (6, 3, 224, 224) and targets.tolist() == [0, 0, 1, 1, 2, 2]
    # Resize(256) of a 48x40 image gives 307x256 (w x h); CenterCrop(224) then normalise.
    path = sorted((folder / "val" / sorted(IMAGENET_WNIDS)[0]).iterdir())[0]
    resized = Image.open(path).convert("RGB").resize((307, 256), Image.BILINEAR)
    left, top = round((307 - 224) / 2), round((256 - 224) / 2)
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)))[None]
    expected = normalised(crop, IMAGENET_MEAN, IMAGENET_STD)[0]
    np.testing.assert_allclose(images[0].numpy(), expected, atol=1e-5)


def test_imagenet_missing_names_the_tree(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        get_dataset(make_cfg("imagenet", tmp_path))
    message = str(error.value)
    assert str(tmp_path / "imagenet" / "train") in message
    assert "train/<wnid>/*.JPEG" in message and "val/<wnid>/*.JPEG" in message
    assert "\n" not in message


def test_imagenet_empty_or_mismatched_val(tmp_path):
    folder = write_fake_imagenet(tmp_path)
    for wnid_dir in (folder / "val").iterdir():
        for file in wnid_dir.iterdir():
            file.unlink()
    with pytest.raises(DatasetNotFoundError, match="no usable images"):
        get_dataset(make_cfg("imagenet", tmp_path))

    other = tmp_path / "other"
    write_fake_imagenet(other)
    write_fake_imagenet(other, wnids=("n99999999",), val_per_class=1, train_per_class=0)
    with pytest.raises(DatasetNotFoundError, match="class folders differ"):
        get_dataset(make_cfg("imagenet", other))


def test_tiny_imagenet_items_shapes_and_normalisation(tmp_path):
    folder = write_fake_tiny_imagenet(tmp_path, train_per_class=3, val_per_class=2)
    cfg = make_cfg("tiny_imagenet", tmp_path)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    assert (num_data, num_classes) == (9, len(TINY_IMAGENET_WNIDS))
    check_train_batch(next(iter(train_loader)), 8, (3, 64, 64), num_classes)

    images, targets = next(iter(val_loader))
    assert tuple(images.shape) == (6, 3, 64, 64) and targets.tolist() == [0, 0, 1, 1, 2, 2]
    wnids = sorted(TINY_IMAGENET_WNIDS)
    paths = [p for wnid in wnids for p in sorted((folder / "val" / wnid).iterdir())]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    expected = normalised(pixels, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-5)


def test_tiny_imagenet_raw_val_layout(tmp_path):
    folder = write_fake_tiny_imagenet(tmp_path, raw_val=True)
    with pytest.raises(DatasetNotFoundError, match="reorganize_val") as error:
        get_dataset(make_cfg("tiny_imagenet", tmp_path))
    assert str(folder / "val") in str(error.value)

    assert reorganize_val(folder) == 2 * len(TINY_IMAGENET_WNIDS)
    _, val_loader, _, _ = get_dataset(make_cfg("tiny_imagenet", tmp_path))
    assert sorted(val_loader.dataset.targets) == [0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        get_dataset(make_cfg("tiny_imagenet", tmp_path))
    assert str(tmp_path / "tiny-imagenet-200" / "train") in str(error.value)


# ----------------------------------------------------------------------------------------- digits


def test_digits_items_shapes_and_sizes(tmp_path):
    cfg = make_cfg("digits", tmp_path / "unused", IMAGE_SIZE=32)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    assert (num_data, num_classes) == (1437, 10)
    assert len(val_loader.dataset) == 360
    check_train_batch(next(iter(train_loader)), 8, (3, 32, 32), 10)
    images, targets = next(iter(val_loader))
    assert images.dtype == torch.float32 and tuple(images.shape) == (64, 3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert targets.dtype == torch.int64


def test_digits_split_is_stratified_and_fixed(tmp_path):
    labels = load_digits().target
    _, _, train_labels, test_labels = digits_split()
    assert len(train_labels) + len(test_labels) == len(labels) == 1797
    overall = np.bincount(labels, minlength=10) / len(labels)
    for split in (train_labels, test_labels):
        share = np.bincount(split, minlength=10) / len(split)
        assert np.abs(share - overall).max() < 0.01

    first = build_datasets(make_cfg("digits", tmp_path))
    cfg = make_cfg("digits", tmp_path)
    cfg.EXPERIMENT.SEED = 1234
    torch.manual_seed(99)
    np.random.seed(99)
    second = build_datasets(cfg)
    assert first[0].targets == second[0].targets == train_labels.tolist()
    assert torch.equal(first[1].images, second[1].images)


def test_digits_normalisation_uses_train_statistics(tmp_path):
    _, val_set, _ = build_datasets(make_cfg("digits", tmp_path, IMAGE_SIZE=8))
    train_images, test_images, _, test_labels = digits_split()
    mean, std = (train_images / 16.0).mean(), (train_images / 16.0).std(ddof=1)
    images = torch.stack([val_set[i][0] for i in range(len(val_set))]).numpy()
    expected = np.repeat(((test_images / 16.0 - mean) / std)[:, None], 3, axis=1)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert [val_set[i][1] for i in range(3)] == test_labels[:3].tolist()


def test_digits_train_crop_pads_with_background(tmp_path):
    train_set, _, _ = build_datasets(make_cfg("digits", tmp_path, IMAGE_SIZE=16))
    base = train_set.dataset
    mean, std = base.images.mean().item(), base.images.std().item()
    torch.manual_seed(0)
    crops = torch.stack([train_set[0][0] for _ in range(20)])
    assert tuple(crops.shape) == (20, 3, 16, 16)
    assert crops.min().item() == pytest.approx(-mean / std, abs=1e-5)  # padding = black
    assert not all(torch.equal(crops[0], crop) for crop in crops[1:])  # the crop moves


# ------------------------------------------------------------------------------- registry, loaders


def test_unknown_type():
    with pytest.raises(UnknownNameError, match="cifar100"):
        build_datasets(make_cfg("cifar10", "data"))
    assert set(dataset_registry) == {"cifar100", "imagenet", "tiny_imagenet", "digits"}


def test_build_loaders_with_sampler_and_workers(tmp_path):
    cfg = make_cfg("digits", tmp_path, IMAGE_SIZE=8, NUM_WORKERS=1)
    train_set, val_set, _ = build_datasets(cfg)
    assert isinstance(train_set, InstanceDataset)
    sampler = torch.utils.data.SequentialSampler(train_set)
    train_loader, val_loader = build_loaders(cfg, train_set, val_set, train_sampler=sampler)
    assert train_loader.sampler is sampler and train_loader.persistent_workers
    assert train_loader.drop_last is False and train_loader.batch_size == 8
    assert val_loader.batch_size == 64
    assert train_loader.pin_memory == torch.cuda.is_available()
    _, _, index = next(iter(train_loader))
    assert index.tolist() == list(range(8))
    assert isinstance(val_loader.sampler, torch.utils.data.SequentialSampler)

    shuffled, _ = build_loaders(make_cfg("digits", tmp_path), train_set, val_set)
    assert isinstance(shuffled.sampler, torch.utils.data.RandomSampler)
    assert not shuffled.persistent_workers


# ------------------------------------------------------------------------ DATASET.TRAIN_FRACTION


def image_rows(images: torch.Tensor) -> list:
    return [bytes(row.numpy().tobytes()) for row in images.reshape(len(images), -1)]


@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_train_fraction_is_a_stratified_seeded_subset_of_the_split(tmp_path, fraction):
    full, full_val, _ = build_datasets(make_cfg("digits", tmp_path))
    part, part_val, _ = build_datasets(make_cfg("digits", tmp_path, TRAIN_FRACTION=fraction))
    labels = np.asarray(full.targets)
    assert len(part) == int(fraction * len(labels))  # sklearn's float train_size: floor(fraction * n)
    counts = np.bincount(part.targets, minlength=10)
    assert np.all(np.abs(counts - fraction * np.bincount(labels)) <= 1), counts  # each class keeps its share
    label_of = dict(zip(image_rows(full.dataset.images), labels.tolist()))
    rows = image_rows(part.dataset.images)
    assert len(set(rows)) == len(rows) and all(label_of[r] == t for r, t in zip(rows, part.targets))
    assert torch.equal(part_val.images, full_val.images) and part_val.targets == full_val.targets  # test split whole

    again, _, _ = build_datasets(make_cfg("digits", tmp_path, TRAIN_FRACTION=fraction))
    assert torch.equal(again.dataset.images, part.dataset.images)
    other_cfg = make_cfg("digits", tmp_path, TRAIN_FRACTION=fraction)
    other_cfg.EXPERIMENT.SEED = 1
    other, _, _ = build_datasets(other_cfg)
    assert set(image_rows(other.dataset.images)) != set(rows)


def test_train_fraction_keeps_the_in_memory_loader(tmp_path):
    cfg = make_cfg("digits", tmp_path, TRAIN_FRACTION=0.1, FAST_AUG=True)
    train_loader, _, num_data, _ = get_dataset(cfg)
    assert type(train_loader).__name__ == "InMemoryLoader" and num_data == 143
    batches = list(train_loader)
    seen, targets = torch.cat([b[2] for b in batches]), torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(143))
    assert targets.tolist() == [train_loader.dataset.targets[i] for i in seen.tolist()]


def test_train_fraction_of_an_image_folder_keeps_files_and_labels_together(tmp_path):
    write_fake_imagenet(tmp_path, train_per_class=4, val_per_class=1, size=(40, 40))
    train_set, _, _ = build_datasets(make_cfg("imagenet", tmp_path, TRAIN_FRACTION=0.5))
    samples = train_set.dataset.samples
    assert len(samples) == 6 and np.bincount(train_set.targets).tolist() == [2, 2, 2]
    classes = train_set.dataset.classes
    assert all(f"/{classes[label]}/" in path for path, label in samples)
    assert [label for _, label in samples] == train_set.targets


@pytest.mark.parametrize("fraction, fragment", [(0.0, "must be in (0, 1]"), (1.5, "must be in (0, 1]"),
                                                (0.005, "fewer than the 10 classes")])
def test_train_fraction_out_of_range_says_how_to_fix_it(tmp_path, fraction, fragment):
    with pytest.raises(UserError, match="DATASET.TRAIN_FRACTION") as error:
        build_datasets(make_cfg("digits", tmp_path, TRAIN_FRACTION=fraction))
    assert fragment in str(error.value)
