"""CIFAR-100 through torchvision, laid out as ``<DATASET.ROOT>/cifar-100-python/{train,test,meta}``.

Augmentation and normalisation follow MDistiller: ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize(CIFAR100_MEAN, CIFAR100_STD)``; validation only
converts and normalises. At another ``DATASET.IMAGE_SIZE`` (224 for ImageNet-pretrained teachers)
both end their geometric steps with ``Resize`` to that size (``DATASET.INTERPOLATION``, bilinear
or bicubic): the 32 px crop is upsampled, which the in-memory fast augmentation does on the device.
``DATASET.RAND_AUGMENT`` and ``DATASET.RANDOM_ERASING`` (the transformer recipe) add timm's
RandAugment after the resize and its RandomErasing after the normalisation; the training set then
goes through the ordinary DataLoader (the fast augmentation batches crop / flip / resize only).

``DATASET.DOWNLOAD True`` lets torchvision download and extract the archive into ``DATASET.ROOT``.

Environment variable ``MDISTILLER_SKIP_CIFAR_MD5``: set to ``1`` (or ``true`` / ``yes``) to skip
torchvision's md5 comparison of the three files, and nothing else: they must still exist and
unpickle as CIFAR-100. Meant for tests that write tiny copies in the real format
(``tests/fake_data.py``); never needed for the official archive.
"""

import os
import pickle
from pathlib import Path
from typing import Callable, List, Optional, Union

from torchvision import datasets, transforms
from yacs.config import CfgNode

from mdistiller.dataset.augment import interpolation_mode, train_transform
from mdistiller.dataset.base import InstanceDataset, dataset_registry, dataset_root, image_size
from mdistiller.errors import DatasetNotFoundError

__all__ = [
    "CIFAR100",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "SKIP_MD5_ENV",
    "build_cifar100",
    "cifar100_train_transform",
    "cifar100_val_transform",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
SKIP_MD5_ENV = "MDISTILLER_SKIP_CIFAR_MD5"


def skip_md5_requested() -> bool:
    """Whether ``MDISTILLER_SKIP_CIFAR_MD5`` asks to skip the checksum comparison."""
    return os.environ.get(SKIP_MD5_ENV, "").strip().lower() in {"1", "true", "yes"}


class CIFAR100(datasets.CIFAR100):
    """torchvision's CIFAR-100 whose failures are one-line :class:`DatasetNotFoundError` s.

    Items are ``(image, target)``. With ``MDISTILLER_SKIP_CIFAR_MD5`` set, the expected checksums
    are dropped (torchvision then checks only that each file exists); loading is unchanged.
    """

    def __init__(
        self,
        root: Union[str, Path],
        train: bool = True,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        download: bool = False,
    ) -> None:
        if skip_md5_requested():
            self.train_list = [[name, None] for name, _ in type(self).train_list]
            self.test_list = [[name, None] for name, _ in type(self).test_list]
            self.meta = {**type(self).meta, "md5": None}
        self.root = os.path.expanduser(os.fspath(root))
        folder = os.path.join(self.root, self.base_folder)
        if download:
            try:
                self.download()
            except (OSError, RuntimeError) as error:
                raise DatasetNotFoundError(
                    f"CIFAR-100 not found at {folder} and the download failed ({error}): "
                    f"extract {self.url} into {self.root} by hand"
                ) from None
        self._require_files(folder)
        try:
            super().__init__(
                self.root, train=train, transform=transform, target_transform=target_transform
            )
        except RuntimeError:  # torchvision's integrity check: the files exist, so a checksum failed
            raise DatasetNotFoundError(
                f"CIFAR-100 at {folder} fails its md5 check (corrupt or not the official archive): "
                f"delete it and download it again with DATASET.DOWNLOAD True"
            ) from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise DatasetNotFoundError(
                f"CIFAR-100 at {folder} cannot be read ({type(error).__name__}: {error}): "
                f"delete it and download it again with DATASET.DOWNLOAD True"
            ) from None

    def _require_files(self, folder: str) -> None:
        """Raise a one-line error naming the first missing file."""
        names = [entry[0] for entry in self.train_list + self.test_list] + [self.meta["filename"]]
        for name in names:
            if not os.path.isfile(os.path.join(folder, name)):
                raise DatasetNotFoundError(
                    f"CIFAR-100 not found at {folder} (no file '{name}'): download it to "
                    f"{self.root} or set DATASET.DOWNLOAD True"
                )


def resize_to(size: int, interpolation: str) -> List[transforms.Resize]:
    """``[Resize((size, size))]`` with `interpolation` ("bilinear" / "bicubic"), or [] at 32 px."""
    if size == 32:
        return []
    return [transforms.Resize((size, size), interpolation=transforms.InterpolationMode(interpolation))]


def cifar100_train_transform(size: int = 32, interpolation: str = "bilinear",
                             cfg: Optional[CfgNode] = None) -> transforms.Compose:
    """MDistiller's CIFAR-100 training augmentation, its crop resized to `size`; with `cfg`, also
    the RandAugment and random erasing its DATASET section asks for (:mod:`mdistiller.dataset.augment`)."""
    geometric = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *resize_to(size, interpolation)]
    return train_transform(geometric, cfg, size, CIFAR100_MEAN, CIFAR100_STD)


def cifar100_val_transform(size: int = 32, interpolation: str = "bilinear") -> transforms.Compose:
    """MDistiller's CIFAR-100 evaluation transform (no augmentation), resized to `size`."""
    return transforms.Compose(
        [*resize_to(size, interpolation), transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    )


@dataset_registry.register("cifar100")
def build_cifar100(cfg: CfgNode):
    """``(train_set, val_set, 100)``; train items carry their index."""
    root = dataset_root(cfg)
    download = bool(cfg.DATASET.DOWNLOAD)
    size, interpolation = image_size(cfg), interpolation_mode(cfg).value
    train_set = CIFAR100(root, train=True, transform=cifar100_train_transform(size, interpolation, cfg),
                         download=download)
    val_set = CIFAR100(root, train=False, transform=cifar100_val_transform(size, interpolation))
    return InstanceDataset(train_set), val_set, 100
