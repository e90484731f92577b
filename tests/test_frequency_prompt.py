"""FreeKD's frequency prompt: masks, the stage-1 prompted map and the diversity terms."""

import itertools

import numpy as np
import pytest
import pywt
import torch

from helpers import pywt_prompted_map
from mdistiller.frequency.prompt import (FrequencyBands, FrequencyPrompt, dice_diversity, mask_diversity,
                                         prompt_masks, soft_jaccard_diversity)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_masks_match_a_direct_formula():
    rng = np.random.default_rng(0)
    tokens, band = rng.normal(size=(3, 5)), rng.normal(size=(2, 5, 4, 3))
    got = prompt_masks(torch.from_numpy(tokens), torch.from_numpy(band)).numpy()
    assert got.shape == (2, 3, 4, 3)
    for b, t, y, x in itertools.product(range(2), range(3), range(4), range(3)):
        assert got[b, t, y, x] == pytest.approx(sigmoid(sum(tokens[t, c] * band[b, c, y, x] for c in range(5))), rel=1e-12)


def test_masks_are_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks = prompt_masks(torch.randn(2, 8), torch.randn(1, 8, 4, 4).bfloat16())
    assert masks.dtype == torch.float32


def test_prompt_shapes_and_init():
    torch.manual_seed(0)
    prompt = FrequencyPrompt(channels=64, num_tokens=6, levels=3)
    assert prompt.tokens.shape == (4, 6, 64)
    assert prompt.tokens.std().item() == pytest.approx(0.01, rel=0.1)
    assert abs(prompt.tokens.mean().item()) < 2e-3
    masks = prompt.masks(prompt.decompose(torch.randn(2, 64, 8, 8)))
    assert [tuple(m.shape) for m in masks] == [(2, 6, 1, 1), (2, 6, 4, 4), (2, 6, 2, 2), (2, 6, 1, 1)]
    assert all(((m > 0) & (m < 1)).all() for m in masks)


def test_bands_group_pywavelets_coefficients():
    x = np.random.default_rng(1).normal(size=(1, 2, 7, 6))
    bands = FrequencyBands.of(torch.from_numpy(x), 2)
    cA, level2, level1 = pywt.wavedec2(x, "haar", mode="zero", level=2)
    np.testing.assert_allclose(bands.low.numpy(), cA, atol=1e-12)
    np.testing.assert_allclose(bands.highs[0].numpy(), np.stack(level1, axis=2), atol=1e-12)
    np.testing.assert_allclose(bands.highs[1].numpy(), np.stack(level2, axis=2), atol=1e-12)
    np.testing.assert_allclose(bands.mask_inputs()[1].numpy(), sum(level1), atol=1e-12)
    np.testing.assert_allclose(bands.reconstruct().numpy(), x, atol=1e-12)


def test_prompted_map_equals_idwt_of_masked_bands_computed_with_pywavelets():
    torch.manual_seed(0)
    prompt = FrequencyPrompt(channels=3, num_tokens=2, levels=2, init_std=0.5).double()
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 5))
    got, masks = prompt(torch.from_numpy(x))
    expected = pywt_prompted_map(x, prompt.tokens.detach().numpy())
    assert got.shape == x.shape
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-10)
    assert len(masks) == 3


def masks_from(rows):
    """(1, T, 1, N) masks from T rows of N values."""
    return torch.tensor(rows, dtype=torch.float64)[None, :, None, :]


@pytest.mark.parametrize("rows, dice, jaccard", [
    ([[1, 0], [0, 1]], 0.0, 0.0),                # disjoint
    ([[1, 1], [1, 1]], 1.0, 1.0),                # identical
    ([[1, 1], [1, 0]], 2 / 3, 1 / 2),            # <p,q>=1, |p|^2=2, |q|^2=1
    ([[0.5, 0.5], [1, 0]], 2 * 0.5 / 1.5, 0.5 / 1.0),
])
def test_diversity_hand_worked_pairs(rows, dice, jaccard):
    assert dice_diversity(masks_from(rows)).item() == pytest.approx(dice, abs=1e-9)
    assert soft_jaccard_diversity(masks_from(rows)).item() == pytest.approx(jaccard, abs=1e-9)
    assert mask_diversity(masks_from(rows), "jaccard").item() == pytest.approx(jaccard, abs=1e-9)


def test_diversity_is_the_mean_over_batch_and_ordered_pairs():
    # three masks: pairs (1,2) Dice 0, (1,3) Dice 2*1/(2+1), (2,3) Dice 0; second sample all identical (Dice 1)
    first = [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    second = [[1, 1, 1]] * 3
    masks = torch.tensor([first, second], dtype=torch.float64)[:, :, None, :]
    expected = ((0 + 2 / 3 + 0) / 3 + 1.0) / 2
    assert dice_diversity(masks).item() == pytest.approx(expected, abs=1e-9)
    assert dice_diversity(masks[:, :1]).item() == 0.0  # one token: nothing to compare
    with pytest.raises(ValueError):
        mask_diversity(masks, "cosine")


def test_prompt_diversity_sums_band_sets_and_reaches_tokens():
    torch.manual_seed(0)
    prompt = FrequencyPrompt(channels=4, num_tokens=3, levels=2)
    _, masks = prompt(torch.randn(2, 4, 8, 8))
    total = prompt.diversity(masks, "dice")
    assert total.item() == pytest.approx(sum(dice_diversity(m).item() for m in masks), rel=1e-6)
    total.backward()
    assert prompt.tokens.grad is not None and prompt.tokens.grad.abs().sum() > 0
