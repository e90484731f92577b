"""DATASET.FAST_AUG: the batched in-memory augmentation draws from torchvision's distribution,
equals its pipeline for the same draws, and the loader covers the data as a DataLoader does."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader, DistributedSampler
from torch.overrides import TorchFunctionMode
from torchvision import transforms

from fake_data import write_fake_cifar100
from mdistiller.dataset import build_datasets, get_dataset
from mdistiller.dataset.cifar100 import (CIFAR100, CIFAR100_MEAN, CIFAR100_STD, SKIP_MD5_ENV,
                                         cifar100_train_transform)
from mdistiller.dataset.fast_aug import BatchedAugmentation, InMemoryLoader, batched_augmentation, fast_loader
from mdistiller.engine.cfg import build_cfg

PAD = 4
SPAN = 2 * PAD + 1


pytestmark = pytest.mark.usefixtures("torch_single_thread")

def torchvision_view(image: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's functional ops for one given draw: pad, crop, flip, ToTensor, Normalize."""
    pil = TF.crop(TF.pad(Image.fromarray(image), PAD), top, left, 32, 32)
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), CIFAR100_MEAN, CIFAR100_STD)


def cifar_loader(images: np.ndarray, batch_size: int, transform=None) -> InMemoryLoader:
    augmentation = batched_augmentation(transform or cifar100_train_transform(), uint8=True)
    return InMemoryLoader(None, torch.from_numpy(images), [0] * len(images), augmentation, batch_size,
                          with_index=False)


def coded_image() -> np.ndarray:
    """Channel 0 holds row + 1, channel 1 column + 1: a crop's offsets can be read off its centre."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows + 1, cols + 1, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def decode(views_uint8_hwc: torch.Tensor):
    """(top, left, flip) of crops of the coded image, from the two pixels left of and at the centre."""
    a, b = views_uint8_hwc[:, 16, 15].long(), views_uint8_hwc[:, 16, 16].long()
    top = b[:, 0] - 1 - 16 + PAD
    flip = b[:, 1] < a[:, 1]
    left = torch.where(flip, b[:, 1] - 1 - 15 + PAD, b[:, 1] - 1 - 16 + PAD)
    return top, left, flip


def to_uint8_view(normalised: torch.Tensor) -> torch.Tensor:
    """Undo Normalize and ToTensor: (B, 3, 32, 32) float -> (B, 32, 32, 3) integer pixel values."""
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    return (normalised * std + mean).mul(255).round().permute(0, 2, 3, 1)


def test_pipeline_is_read_from_the_transform():
    aug = batched_augmentation(cifar100_train_transform(), uint8=True)
    assert aug == BatchedAugmentation(size=32, padding=4, flip_p=0.5, divisor=255.0,
                                      mean=CIFAR100_MEAN, std=CIFAR100_STD)
    unsupported = [
        transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.ToTensor()]),
        transforms.Compose([transforms.ColorJitter(0.4), transforms.ToTensor()]),
        transforms.Compose([transforms.ToTensor(), transforms.RandomCrop(32, padding=4)]),  # pads normalised
        transforms.Compose([transforms.RandomCrop(32, padding=4)]),  # a PIL image, no tensor
    ]
    assert all(batched_augmentation(t, uint8=True) is None for t in unsupported)


def test_every_draw_equals_torchvision_bit_for_bit():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    draws = [(t, l, f) for t in range(SPAN) for l in range(SPAN) for f in (False, True)]
    top, left, flip = (torch.tensor(v) for v in zip(*draws))
    ours = cifar_loader(image[None], 1).apply(torch.zeros(len(draws), dtype=torch.int64), top, left, flip)
    expected = torch.stack([torchvision_view(image, t, l, f) for t, l, f in draws])
    assert torch.equal(ours, expected)


@pytest.mark.slow
def test_draws_follow_torchvision_distribution():
    """Crop offsets uniform on 0..8 and independent, flip rate 1/2, as RandomCrop(32, 4) and
    RandomHorizontalFlip(); checked against torchvision's own draws on the same coded image."""
    image = coded_image()
    torch.manual_seed(0)
    loader = cifar_loader(np.repeat(image[None], 6000, axis=0), 6000)
    top, left, flip = decode(to_uint8_view(next(iter(loader))[0]))
    n = len(top)
    assert top.min() >= 0 and top.max() <= 8 and left.min() >= 0 and left.max() <= 8

    table = np.zeros((SPAN, SPAN))
    np.add.at(table, (top.numpy(), left.numpy()), 1)
    assert stats.chisquare(table.sum(1)).pvalue > 1e-3  # top uniform
    assert stats.chisquare(table.sum(0)).pvalue > 1e-3  # left uniform
    assert stats.chi2_contingency(table).pvalue > 1e-3  # independent
    assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3

    torch.manual_seed(1)
    pipeline = transforms.Compose([transforms.RandomCrop(32, padding=PAD), transforms.RandomHorizontalFlip()])
    pil = Image.fromarray(image)
    theirs = torch.from_numpy(np.stack([np.asarray(pipeline(pil)) for _ in range(3000)]))
    t_top, t_left, t_flip = decode(theirs)
    for ours_values, their_values, k in ((top, t_top, SPAN), (left, t_left, SPAN), (flip.long(), t_flip.long(), 2)):
        counts = np.stack([np.bincount(ours_values.numpy(), minlength=k), np.bincount(their_values.numpy(), minlength=k)])
        assert stats.chi2_contingency(counts).pvalue > 1e-3


@pytest.mark.slow
def test_pixel_means_per_position_match_torchvision_expectation():
    """The mean image over draws equals the exact mean of torchvision's pipeline over all 162
    equally likely (top, left, flip) draws, within sampling error."""
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    exact = torch.stack([torchvision_view(image, t, l, f) for t in range(SPAN) for l in range(SPAN)
                         for f in (False, True)]).double()
    torch.manual_seed(0)
    views = next(iter(cifar_loader(np.repeat(image[None], 8000, axis=0), 8000)))[0].double()
    z = (views.mean(0) - exact.mean(0)) / (exact.std(0).clamp_min(1e-6) / len(views) ** 0.5)
    assert z.abs().max() < 5.5  # 3072 positions: |z| > 5.5 has probability ~1e-4 under the same law
    assert (z.abs() > 3).float().mean() < 0.01


def test_loader_covers_the_data_like_a_dataloader():
    images = np.random.default_rng(2).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    targets = list(range(100, 121))
    loader = InMemoryLoader(None, torch.from_numpy(images), targets,
                            batched_augmentation(cifar100_train_transform(), uint8=True), 8)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [8, 8, 5]
    image, target, index = (torch.cat(parts) for parts in zip(*batches))
    assert sorted(index.tolist()) == list(range(21)) and torch.equal(target, index + 100)
    assert image.dtype == torch.float32 and image.shape == (21, 3, 32, 32)
    assert image.is_contiguous(memory_format=torch.channels_last)

    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(21), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(3)
        loader.sampler = sampler
        shards.append(torch.cat([b[2] for b in loader]).tolist())
    assert len(shards[0]) == len(shards[1]) == 11 and set(shards[0]) | set(shards[1]) == set(range(21))


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    write_fake_cifar100(tmp_path, num_train=20, num_test=10)
    return tmp_path


def test_get_dataset_uses_it_for_cifar_and_validation_is_unchanged(fake_cifar):
    cfg = build_cfg(None, [f"DATASET.ROOT={fake_cifar}", "DATASET.NUM_WORKERS=0", "SOLVER.BATCH_SIZE=8"])
    train_loader, val_loader, num_data, _ = get_dataset(cfg)
    assert isinstance(train_loader, InMemoryLoader) and isinstance(val_loader, InMemoryLoader)
    assert num_data == 20 and train_loader.dataset.targets == train_loader.targets.tolist()
    plain_cfg = build_cfg(None, [f"DATASET.ROOT={fake_cifar}", "DATASET.NUM_WORKERS=0", "DATASET.FAST_AUG=False"])
    _, plain_val, _, _ = get_dataset(plain_cfg)
    assert isinstance(plain_val, DataLoader)
    for (a, ya), (b, yb) in zip(val_loader, plain_val):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_digits_and_non_plain_datasets(fake_cifar):
    cfg = build_cfg(None, ["DATASET.TYPE=digits", "DATASET.IMAGE_SIZE=16", "DATASET.NUM_WORKERS=0"])
    train_set, val_set, _ = build_datasets(cfg)
    train = fast_loader(train_set, 64, shuffle=True)
    assert train.augmentation.padding == 2 and train.augmentation.flip_p == 0 and train.augmentation.divisor == 1
    torch.manual_seed(0)
    crops = next(iter(train))[0]
    base = train_set.dataset
    background = (0 - base.transform.transforms[1].mean[0]) / base.transform.transforms[1].std[0]
    assert crops.min().item() == pytest.approx(background, abs=1e-5)  # zero padding, then normalised
    val = fast_loader(val_set, 64, shuffle=False)
    expected = torch.stack([val_set[i][0] for i in range(64)])
    assert torch.equal(next(iter(val))[0], expected)

    class ContrastiveCIFAR(CIFAR100):  # returns more than (image, target): must keep its DataLoader
        def __getitem__(self, index):
            image, target = super().__getitem__(index)
            return image, target, index, torch.zeros(4, dtype=torch.long)

    crd = ContrastiveCIFAR(fake_cifar, train=True, transform=cifar100_train_transform())
    assert fast_loader(crd, 8, shuffle=True) is None


class CallLog(TorchFunctionMode):
    """Every torch function called inside the block, with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def names_a_device(args, kwargs) -> bool:
    values = list(args) + list(kwargs.values())
    return any(isinstance(v, torch.device) or (isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda"))
               for v in values)


def test_batches_drawn_on_the_device_with_one_copy_to_it_per_batch():
    """Each batch copies only its indices to the device (one `.to(device)`); crop offsets and flips
    come from a generator on the loader's device, seeded once per pass from torch's CPU generator."""
    images = np.random.default_rng(3).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    loader = cifar_loader(images, 4).to(torch.device("cpu"))
    torch.manual_seed(0)
    with CallLog() as log:
        batches = list(loader)
    assert len(batches) == 3
    copies = [c for c in log.calls if c[0] in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_)
              and names_a_device(c[1][1:], c[2])]
    created_on_device = [c for c in log.calls if c[0] in (torch.as_tensor, torch.tensor) and "device" in c[2]]
    assert len(copies) == 3 and not created_on_device
    draws = [c for c in log.calls if c[0] in (torch.randint, torch.rand)]
    assert len(draws) == 3 * 3  # top, left, flip per batch
    generators = {id(c[2]["generator"]) for c in draws}
    assert len(generators) == 1
    assert all(c[2]["generator"].device == loader.device and c[2]["device"] == loader.device for c in draws)

    torch.manual_seed(0)
    again = list(loader)
    torch.manual_seed(1)
    other = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))


@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_memory_order_follows_the_channels_last_setting(channels_last):
    images = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    loader = cifar_loader(images, 6).to(torch.device("cpu"), channels_last=channels_last)
    torch.manual_seed(0)
    image = next(iter(loader))[0]
    assert image.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert image.is_contiguous() is not channels_last
    torch.manual_seed(0)
    reference = next(iter(cifar_loader(images, 6)))[0]  # the same draws, default layout
    assert torch.equal(image, reference)


# -- CIFAR-100 at 224 px (DATASET.IMAGE_SIZE 224): the crop resized on the device
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resized_draws_equal_torchvision_tensor_resize(mode):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    draws = [(0, 8, True), (4, 4, False), (8, 0, False)]
    top, left, flip = (torch.tensor(v) for v in zip(*draws))
    loader = cifar_loader(image[None], 1, cifar100_train_transform(224, mode))
    assert loader.augmentation.resize == 224 and loader.augmentation.interpolation == mode
    ours = loader.apply(torch.zeros(len(draws), dtype=torch.int64), top, left, flip)
    assert ours.shape == (3, 3, 224, 224)
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    for view, (t, l, f) in zip(ours, draws):
        pil = TF.crop(TF.pad(Image.fromarray(image), PAD), t, l, 32, 32)
        crop = TF.to_tensor(TF.hflip(pil) if f else pil)
        resized = TF.resize(crop, [224, 224], interpolation=transforms.InterpolationMode(mode), antialias=True)
        torch.testing.assert_close(view, (resized - mean) / std, rtol=0, atol=1e-5)


def test_image_size_224_resizes_train_and_eval_and_32_changes_nothing(fake_cifar):
    base = [f"DATASET.ROOT={fake_cifar}", "DATASET.NUM_WORKERS=0", "SOLVER.BATCH_SIZE=8"]
    batches = {}
    for size in (0, 32, 224):
        train_loader, val_loader, _, _ = get_dataset(build_cfg(None, base + [f"DATASET.IMAGE_SIZE={size}"]))
        assert isinstance(train_loader, InMemoryLoader) and isinstance(val_loader, InMemoryLoader)
        torch.manual_seed(3)
        batches[size] = (next(iter(train_loader))[0], next(iter(val_loader))[0])
    assert batches[224][0].shape == (8, 3, 224, 224) and batches[224][1].shape == (10, 3, 224, 224)
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[32]))
    expected_val = F.interpolate(batches[32][1], size=(224, 224), mode="bilinear", antialias=True)
    torch.testing.assert_close(batches[224][1], expected_val, rtol=0, atol=1e-4)
