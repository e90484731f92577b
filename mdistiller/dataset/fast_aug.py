"""In-memory datasets with batched augmentation on the device (DATASET.FAST_AUG).

CIFAR-100 (uint8, 150 MB) and the digits fit in memory. Instead of one PIL image and one Python
transform call per item in worker processes, :class:`InMemoryLoader` keeps the whole set as one
NHWC tensor (on the training device once the trainer calls ``.to(device)``) and augments a batch
at a time: a random crop of the zero-padded images and a horizontal flip as one gather, a resize
when the images are used at another size (``DATASET.IMAGE_SIZE 224``), then the normalisation.

The draws follow torchvision's transforms exactly in distribution: ``RandomCrop(S, padding=p)``
takes the top and left offsets independently and uniformly in ``{0, ..., 2p}`` of the zero-padded
image, ``RandomHorizontalFlip(q)`` flips with probability ``q``, ``ToTensor`` divides uint8 by
255 and ``Normalize`` subtracts the mean and divides by the std. The pipeline is read from the
dataset's own transform (:func:`batched_augmentation`), so a dataset whose transform holds anything
else keeps the ordinary DataLoader. The set is stored with the crop's zero padding (CIFAR-100's
training set: 50,000 x 40 x 40 x 3 bytes, 240 MB).
"""

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision import datasets, transforms

from mdistiller.dataset.base import InstanceDataset
from mdistiller.dataset.digits import DigitsDataset

__all__ = ["BatchedAugmentation", "InMemoryLoader", "batched_augmentation", "crop_flip", "fast_loader", "pad_images"]


@dataclass(frozen=True)
class BatchedAugmentation:
    """A torchvision pipeline of RandomCrop / RandomHorizontalFlip / ToTensor / Normalize, as numbers."""

    size: Optional[int] = None  # crop size; None: no crop
    padding: int = 0
    flip_p: float = 0.0
    divisor: float = 1.0  # 255 after ToTensor on uint8 images
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    resize: Optional[int] = None  # output size of a Resize after the crop; None: no resize
    interpolation: str = "bilinear"


def _symmetric_padding(padding) -> Optional[int]:
    if isinstance(padding, int):
        return padding
    values = list(padding) if isinstance(padding, Sequence) else []
    return values[0] if values and all(v == values[0] for v in values) else None


def batched_augmentation(transform, uint8: bool) -> Optional[BatchedAugmentation]:
    """`transform` as a :class:`BatchedAugmentation`, or None when it holds anything else.

    Accepted: ``Compose`` of RandomCrop (constant zero padding, same on every side, no
    pad_if_needed) and RandomHorizontalFlip in any order, then a square bilinear or bicubic Resize,
    then ToTensor (only for uint8 images), then Normalize; each optional.
    """
    steps = list(transform.transforms) if isinstance(transform, transforms.Compose) else [transform]
    fields = {}
    stage = 0  # 0: geometric steps, 1: after ToTensor, 2: after Normalize
    for step in steps:
        if isinstance(step, transforms.RandomCrop) and stage == 0 and "size" not in fields:
            padding = _symmetric_padding(step.padding)
            if padding is None or step.fill != 0 or step.padding_mode != "constant" or step.pad_if_needed:
                return None
            if step.size[0] != step.size[1]:
                return None
            fields.update(size=int(step.size[0]), padding=padding)
        elif isinstance(step, transforms.RandomHorizontalFlip) and stage == 0 and "flip_p" not in fields:
            fields["flip_p"] = float(step.p)
        elif isinstance(step, transforms.Resize) and stage == 0 and "resize" not in fields:
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            modes = (transforms.InterpolationMode.BILINEAR, transforms.InterpolationMode.BICUBIC)
            if len(set(size)) != 1 or step.max_size is not None or step.interpolation not in modes:
                return None
            fields.update(resize=int(size[0]), interpolation=step.interpolation.value)
        elif isinstance(step, transforms.ToTensor) and stage == 0 and uint8:
            fields["divisor"] = 255.0
            stage = 1
        elif isinstance(step, transforms.Normalize) and stage < 2 and (stage == 1 or not uint8):
            fields.update(mean=tuple(float(m) for m in step.mean), std=tuple(float(s) for s in step.std))
            stage = 2
        else:
            return None
    if uint8 and "divisor" not in fields:
        return None
    return BatchedAugmentation(**fields)


def pad_images(images: Tensor, padding: int) -> Tensor:
    """(N, H, W, C) images with `padding` zero rows and columns on every side (done once per set)."""
    if padding == 0:
        return images.contiguous()
    n, height, width, channels = images.shape
    padded = images.new_zeros(n, height + 2 * padding, width + 2 * padding, channels)
    padded[:, padding:padding + height, padding:padding + width] = images
    return padded


def crop_flip(padded: Tensor, index: Tensor, top: Tensor, left: Tensor, flip: Tensor, size: int) -> Tensor:
    """`size` x `size` crops at (`top`, `left`) of the padded NHWC images `padded[index]`, mirrored
    where `flip`: one ``index_select`` for the whole batch.

    `padded` (N, H', W', C) contiguous; `index`, `top`, `left` (B,) int64 with offsets in
    ``0..H'-size``; `flip` (B,) bool. Returns (B, size, size, C) of `padded`'s dtype.
    """
    n, height, width, channels = padded.shape
    steps = torch.arange(size, device=padded.device)
    rows = top[:, None] + steps
    cols = left[:, None] + torch.where(flip[:, None], steps.flip(0), steps)
    pixel = (index[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
    return padded.view(n * height * width, channels).index_select(0, pixel.view(-1)).view(-1, size, size, channels)


class InMemoryLoader:
    """Batches of ``(image, target[, index])`` from in-memory NHWC images, augmented per batch.

    Iterates `sampler` (shuffled by default; a DistributedSampler under DDP) in batches of
    `batch_size`, the last partial batch kept unless `drop_last`. The images are stored once with
    the crop's zero padding. Everything of a batch happens on the loader's device (the training
    device once the trainer calls ``.to(device)``): the only host-to-device copy is the batch's
    indices. Crop offsets and flips are drawn there from a generator on that device, seeded at
    the start of each pass from torch's global CPU generator, so the trainer's per-epoch seeding
    makes an epoch reproducible. Images come out as float32 NCHW tensors, in channels_last memory
    order unless ``.to(device, channels_last=False)``.

    The draws form a finite set of views per image (:attr:`view_count`: crop offsets per axis
    squared, times 2 with a flip; CIFAR-100's pad 4 crop 32 and flip: 9 x 9 x 2 = 162), numbered by
    :meth:`view_index`; with `with_view` set, each batch ends with its images' view numbers (the
    teacher cache reads its outputs by them).
    """

    def __init__(self, dataset: Dataset, images: Tensor, targets: Sequence[int], augmentation: BatchedAugmentation,
                 batch_size: int, shuffle: bool = True, sampler: Optional[Sampler] = None,
                 drop_last: bool = False, with_index: bool = True) -> None:
        self.dataset = dataset
        self.image_size = images.shape[1]
        self.images = pad_images(images, augmentation.padding if augmentation.size is not None else 0)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        self.augmentation = augmentation
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.with_index = with_index
        self.with_view = False
        self.channels_last = True
        self.sampler = sampler if sampler is not None else (
            RandomSampler(range(len(self.targets))) if shuffle else SequentialSampler(range(len(self.targets))))
        channels = images.shape[-1]
        self._mean = torch.tensor(augmentation.mean * (channels // len(augmentation.mean)))[:, None, None]
        self._std = torch.tensor(augmentation.std * (channels // len(augmentation.std)))[:, None, None]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device, channels_last: bool = True) -> "InMemoryLoader":
        """Keep the images (and targets) on `device`; batches are then augmented there, and come
        out in channels_last memory order or, with `channels_last` False, contiguous NCHW."""
        self.images = self.images.to(device)
        self.targets = self.targets.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        self.channels_last = channels_last
        return self

    def __len__(self) -> int:
        return len(BatchSampler(self.sampler, self.batch_size, self.drop_last))

    @property
    def random(self) -> bool:
        """Whether batches are drawn at random (a crop or a flip), not only normalised."""
        return self.augmentation.size is not None or self.augmentation.flip_p > 0

    def draw(self, batch: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Crop offsets (top, left) in the padded image and flip flags for `batch` images, drawn on
        the loader's device from `generator` (a generator on that device)."""
        aug, device = self.augmentation, self.device
        if aug.size is not None:
            span = self.images.shape[1] - aug.size + 1
            top = torch.randint(0, span, (batch,), generator=generator, device=device)
            left = torch.randint(0, span, (batch,), generator=generator, device=device)
        else:
            top = left = torch.zeros(batch, dtype=torch.int64, device=device)
        if aug.flip_p > 0:
            flip = torch.rand(batch, generator=generator, device=device) < aug.flip_p
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=device)
        return top, left, flip

    @property
    def view_grid(self) -> Tuple[int, int]:
        """(crop offsets per axis, flip states): 1 offset without a crop, 1 flip state without a flip."""
        span = self.images.shape[1] - self.augmentation.size + 1 if self.augmentation.size is not None else 1
        return span, 2 if self.augmentation.flip_p > 0 else 1

    @property
    def view_count(self) -> int:
        """How many different augmented images :meth:`draw` can give of one image."""
        span, flips = self.view_grid
        return span * span * flips

    def view_index(self, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """The number in ``0..view_count-1`` of each drawn view: ``(top * span + left) * flips + flip``."""
        span, flips = self.view_grid
        return (top * span + left) * flips + (flip.long() if flips == 2 else 0)

    def view_draws(self, view: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The draws (top, left, flip) of view numbers `view`; the inverse of :meth:`view_index`."""
        span, flips = self.view_grid
        offsets, flip = view // flips, (view % flips) == 1
        return offsets // span, offsets % span, flip

    def apply(self, index: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """Images `index` -> normalised float32 (B, C, S, S) for the given draws (all on the
        loader's device).

        After the crop come torchvision's own operations (``div(255)`` of ToTensor,
        ``sub_(mean).div_(std)`` of Normalize), so the result equals its pipeline bit for bit.
        A Resize (CIFAR-100 at 224 px for ImageNet-pretrained teachers) is ``F.interpolate`` of the
        [0, 1] crops on the device, as torchvision's Resize of a tensor (antialiased: PIL's bicubic
kernel), before the normalisation;
        it equals the PIL pipeline's resize up to PIL's rounding to uint8.
        """
        aug = self.augmentation
        size = aug.size if aug.size is not None else self.image_size
        images = crop_flip(self.images, index, top, left, flip, size)
        # (B, H, W, C) viewed as NCHW is channels_last; the float copy keeps that order or makes NCHW.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        out = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=layout)
        if aug.divisor != 1.0:
            out = out.div_(aug.divisor)
        if aug.resize is not None:
            out = F.interpolate(out, size=(aug.resize, aug.resize), mode=aug.interpolation, align_corners=False,
                                antialias=True).contiguous(memory_format=layout)
        return out.sub_(self._mean).div_(self._std)

    def __iter__(self) -> Iterator[List[Tensor]]:
        generator = None
        if self.random:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        for indices in BatchSampler(self.sampler, self.batch_size, self.drop_last):
            index = torch.as_tensor(indices, dtype=torch.int64).to(self.device, non_blocking=True)
            draws = self.draw(len(indices), generator)
            batch = [self.apply(index, *draws), self.targets[index]]
            if self.with_index:
                batch.append(index)
            if self.with_view:
                batch.append(self.view_index(*draws))
            yield batch


# Item getters whose only work is `transform(image), target`: subclasses that return more (CRD's
# contrastive indices) or load differently keep the DataLoader.
PLAIN_GETITEMS = (datasets.CIFAR10.__getitem__, DigitsDataset.__getitem__)


def _images_and_targets(dataset: Dataset) -> Optional[Tuple[Tensor, List[int], bool]]:
    """The in-memory NHWC images of a torchvision CIFAR (`data`, uint8 NHWC numpy) or digits
    (`images`, float NCHW tensor) dataset, its targets and whether they are uint8."""
    if type(dataset).__getitem__ not in PLAIN_GETITEMS:
        return None
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] in (1, 3):
        return torch.from_numpy(data), list(dataset.targets), True
    images = getattr(dataset, "images", None)
    if isinstance(images, Tensor) and images.ndim == 4 and images.is_floating_point():
        return images.permute(0, 2, 3, 1).contiguous(), list(dataset.targets), False
    return None


def fast_loader(dataset: Dataset, batch_size: int, shuffle: bool, sampler: Optional[Sampler] = None,
                drop_last: bool = False) -> Optional[InMemoryLoader]:
    """An :class:`InMemoryLoader` equivalent to ``DataLoader(dataset, ...)``, or None if `dataset`
    is not an in-memory set (or an InstanceDataset around one) whose transform it can batch."""
    base = dataset.dataset if type(dataset) is InstanceDataset else dataset
    found = _images_and_targets(base)
    if found is None or getattr(base, "target_transform", None) is not None:
        return None
    images, targets, uint8 = found
    transform = getattr(base, "transform", None)
    augmentation = BatchedAugmentation() if transform is None and not uint8 else (
        batched_augmentation(transform, uint8) if transform is not None else None)
    if augmentation is None:
        return None
    return InMemoryLoader(dataset, images, targets, augmentation, batch_size, shuffle=shuffle, sampler=sampler,
                          drop_last=drop_last, with_index=type(dataset) is InstanceDataset)
