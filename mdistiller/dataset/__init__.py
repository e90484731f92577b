"""Datasets and loaders: CIFAR-100, ImageNet, Tiny-ImageNet and scikit-learn's digits.

``get_dataset(cfg) -> (train_loader, val_loader, num_data, num_classes)`` as in MDistiller;
``build_datasets`` / ``build_loaders`` are its two halves (the trainer passes a distributed sampler
to the second). Each ``DATASET.TYPE`` is a builder in :data:`dataset_registry`. Train items are
``(image, target, index)`` (plus ``contrastive_index`` for CRD), validation items ``(image, target)``.
"""

from mdistiller.dataset.base import STANDARD_IMAGE_SIZE, InstanceDataset, dataset_registry, dataset_root, image_size
from mdistiller.dataset.cifar100 import CIFAR100, build_cifar100
from mdistiller.dataset.contrastive import ContrastiveInstanceDataset
from mdistiller.dataset.digits import DigitsDataset, build_digits, digits_split
from mdistiller.dataset.imagenet import build_imagenet
from mdistiller.dataset.loaders import build_datasets, build_loaders, get_dataset
from mdistiller.dataset.tiny_imagenet import build_tiny_imagenet, reorganize_val

__all__ = [
    "CIFAR100",
    "ContrastiveInstanceDataset",
    "DigitsDataset",
    "InstanceDataset",
    "build_cifar100",
    "build_datasets",
    "build_digits",
    "build_imagenet",
    "build_loaders",
    "build_tiny_imagenet",
    "dataset_registry",
    "dataset_root",
    "digits_split",
    "get_dataset",
    "image_size",
    "reorganize_val",
    "STANDARD_IMAGE_SIZE",
]
