"""The REMOVE_DC switch of SFAKD, FREEKD and FAMKD: the centred maps' MSE equals the spectral MSE without the
(0, 0) coefficient (numpy FFT, Parseval), and Haar detail bands ignore the removed constant."""

import numpy as np
import pytest
import torch

from mdistiller.distillers import distiller_dict
from mdistiller.errors import ConfigError
from mdistiller.frequency import FrequencyBands, remove_dc
from mdistiller.losses.spatial import pool_to_size
from tests.distiller_step import build
from tests.test_freekd import direct_level_loss, models, save_prompt_file, small_cfg


def test_remove_dc_zeroes_only_the_zero_frequency():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64) + 4.0
    before, after = np.fft.fft2(x.numpy()), np.fft.fft2(remove_dc(x).numpy())
    np.testing.assert_allclose(after[..., 0, 0], 0.0, atol=1e-12)
    mask = np.ones((6, 5), dtype=bool)
    mask[0, 0] = False
    np.testing.assert_allclose(after[..., mask], before[..., mask], atol=1e-12)


def spectral_mse_without_dc(p: np.ndarray, t: np.ndarray) -> float:
    """mean over elements of |P_k - T_k|^2 summed over k != (0, 0): orthonormal 2-D DFT per channel."""
    d = np.fft.fft2(p - t, norm="ortho")
    d[..., 0, 0] = 0.0
    return float((np.abs(d) ** 2).sum() / p.size)


def test_sfakd_remove_dc_compares_the_spectra_without_their_dc_term():
    distiller, _ = build("SFAKD", ["SFAKD.REMOVE_DC=True"])
    distiller.train()
    image, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    _, losses = distiller(image=image, target=target)
    with torch.no_grad():
        projected = distiller.project(distiller.student(image)[1]["feats"][-1])
        teacher_map = pool_to_size(distiller.teacher(image)[1]["feats"][-1], distiller.feature_size)
    expected = spectral_mse_without_dc(projected.double().numpy(), teacher_map.double().numpy())
    assert losses["loss_feat"].item() == pytest.approx(expected, rel=1e-4)
    plain, _ = build("SFAKD")
    plain.train()
    assert plain(image=image, target=target)[1]["loss_feat"].item() > losses["loss_feat"].item()


def test_sfakd_pooled_with_remove_dc_is_refused():
    with pytest.raises(ConfigError, match="SFAKD.POOLED"):
        build("SFAKD", ["SFAKD.REMOVE_DC=True", "SFAKD.POOLED=True"])


@pytest.mark.parametrize("low_band", [False, True])
def test_freekd_remove_dc(tmp_path, low_band):
    # 32 px: the distilled maps are 16x16 and 8x8, so the 3-level DWT needs no padding (a padded
    # level would turn the removed constant into an edge)
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    results = {}
    for remove in (False, True):
        cfg = small_cfg(tmp_path, "DATASET.IMAGE_SIZE=32", f"FREEKD.LOW_BAND={low_band}", f"FREEKD.REMOVE_DC={remove}")
        student, teacher = models()
        prompts, _ = save_prompt_file(cfg, teacher)
        distiller = distiller_dict["FREEKD"](student, teacher, cfg, num_data=10, num_classes=10).train()
        results[remove] = distiller(image=image, target=target)[1]["loss_kd"].item()
    if not low_band:  # Haar detail bands of a constant are zero: nothing changes
        assert results[True] == pytest.approx(results[False], rel=1e-5)
        return
    with torch.no_grad():
        s_feats, t_feats = student(image)[1]["feats"], teacher(image)[1]["feats"]
        expected = 0.0
        for k, i in enumerate([2, 3]):
            t_bands = FrequencyBands.of(t_feats[i] - t_feats[i].mean(dim=(2, 3), keepdim=True), 3)
            s_bands = FrequencyBands.of(s_feats[i] - s_feats[i].mean(dim=(2, 3), keepdim=True), 3)
            expected += direct_level_loss(prompts[k].masks(t_bands), t_bands, s_bands, low_band=True)
    assert results[True] == pytest.approx(float(expected), rel=1e-5)
    assert results[True] != pytest.approx(results[False], rel=1e-3)


def test_famkd_remove_dc_compares_the_spectra_without_their_dc_term():
    distiller, _ = build("FAMKD", ["FAMKD.REMOVE_DC=True", "FAMKD.POOLED_LOSS=False", "FAMKD.WARMUP_EPOCHS=0"])
    distiller.train()
    image, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    _, losses = distiller(image=image, target=target)
    with torch.no_grad():  # train mode: the fusion's BatchNorm uses the same batch statistics
        fused = distiller.hierarchy(distiller.levels(distiller.student(image)[1], "feats"))[:-1]
        targets = distiller.levels(distiller.teacher(image)[1], "feats")[:-1]
    expected = sum(spectral_mse_without_dc(f.double().numpy(), t.double().numpy()) for f, t in zip(fused, targets))
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    plain, _ = build("FAMKD", ["FAMKD.POOLED_LOSS=False", "FAMKD.WARMUP_EPOCHS=0"])
    plain.train()
    assert plain(image=image, target=target)[1]["loss_kd"].item() > losses["loss_kd"].item()


def test_famkd_pooled_loss_with_remove_dc_is_refused():
    with pytest.raises(ConfigError, match="FAMKD.POOLED_LOSS False"):
        build("FAMKD", ["FAMKD.REMOVE_DC=True"])
