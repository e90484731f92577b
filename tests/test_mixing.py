"""Mixup / CutMix / label smoothing of a batch, and the class of a soft target."""

import numpy as np
import torch

from mdistiller.engine.mixing import BatchMixer
from mdistiller.losses.targets import class_index

K = 5


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3][:n])


def test_label_smoothing_alone_is_the_smoothed_one_hot_and_leaves_images():
    image, labels = batch()
    original = image.clone()
    mixed, target = BatchMixer(K, label_smoothing=0.1)(image, labels)
    expected = np.full((4, K), 0.1 / K)
    expected[np.arange(4), labels.numpy()] = 1 - 0.1 + 0.1 / K
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-6)
    assert torch.equal(mixed, original)


def test_mixup_mixes_each_image_with_the_reversed_batch_by_the_target_weight():
    np.random.seed(3)  # timm draws lambda with numpy
    image, labels = batch()
    original = image.clone()
    mixed, target = BatchMixer(K, mixup_alpha=0.8)(image, labels)
    lam = target[0, labels[0]].item()  # no smoothing: target = lam * onehot(y) + (1 - lam) * onehot(y reversed)
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * original + (1 - lam) * original.flip(0))
    np.testing.assert_allclose(target[0, labels.flip(0)[0]].item(), 1 - lam, rtol=1e-6)
    np.testing.assert_allclose(target.sum(1).numpy(), 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_whose_area_is_one_minus_the_weight():
    np.random.seed(1)
    image, labels = batch()
    original = image.clone()
    mixed, target = BatchMixer(K, cutmix_alpha=1.0)(image, labels)
    lam = target[0, labels[0]].item()
    from_partner = (mixed == original.flip(0)).all(dim=1)  # (B, H, W): pixel taken from the partner
    from_self = (mixed == original).all(dim=1)
    assert bool((from_partner | from_self).all())
    np.testing.assert_allclose(from_partner[0].float().mean().item(), 1 - lam, atol=1e-6)


def test_class_index_is_the_label_or_the_heavier_mixed_class():
    labels = torch.tensor([2, 0, 4])
    assert torch.equal(class_index(labels), labels)
    soft = torch.zeros(3, K)
    soft[0, 2], soft[0, 4] = 0.7, 0.3
    soft[1, 0], soft[1, 1] = 0.55, 0.45
    soft[2, 4] = 1.0
    assert class_index(soft).tolist() == [2, 0, 4]

