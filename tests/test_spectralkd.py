"""SPECTRALKD: the spectral loss against numpy's FFT (rfft2, orthonormal, real and imaginary parts
stacked), the adaptive channel pooling and the 2x2 spatial pooling written by hand, the DC switch,
the distiller's three terms (CIFAR models, and a ViT student's token grids), its gradients (student
only with the pooling connector, student and 1x1 convs with CONNECTOR conv), its refusals, and a
digits run through tools/train.py."""

import json
import math
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses.spectralkd import spectralkd_loss
from mdistiller.models import cifar_model_dict
from tests.distiller_step import build, train_step
from tests.tiny_models import tiny

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tiny tensors: one thread is faster on a shared machine


def np_pool_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Adaptive average pooling over axis 1: output channel i averages inputs floor(i C / c) .. ceil((i + 1) C / c) - 1."""
    c_in = x.shape[1]
    out = [x[:, (i * c_in) // channels: -((-(i + 1) * c_in) // channels)].mean(axis=1) for i in range(channels)]
    return np.stack(out, axis=1)


def np_pool_2x2(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def np_spectral_mse(s: np.ndarray, t: np.ndarray, remove_dc: bool = False) -> float:
    """Mean over (b, c, u, v) and the two parts of the squared difference of the half-plane spectra."""
    fs, ft = np.fft.rfft2(s, norm="ortho"), np.fft.rfft2(t, norm="ortho")
    if remove_dc:
        fs[..., 0, 0] = 0.0
        ft[..., 0, 0] = 0.0
    d = fs - ft
    return float(((d.real ** 2).sum() + (d.imag ** 2).sum()) / (2 * d.size))


def test_loss_matches_numpy_fft():
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64),
              torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64) + 1.5),
             (torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64),
              torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64))]
    expected = np.mean([np_spectral_mse(s.numpy(), t.numpy()) for s, t in pairs])
    got = spectralkd_loss([s for s, _ in pairs], [t for _, t in pairs])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a 1x1 map's spectrum is its value: the loss is the squared difference
    one = spectralkd_loss([torch.full((1, 1, 1, 1), 3.0)], [torch.full((1, 1, 1, 1), 1.0)])
    assert one.item() == pytest.approx(4.0 / 2)  # the zero imaginary parts are half of the compared numbers


def reference_losses(distiller, image, target, student_taps, teacher_taps, remove_dc=False):
    """The three terms in numpy from the two models' own outputs (float64)."""
    with torch.no_grad():
        logits_s, feats_s = distiller.student(image)
        logits_t, feats_t = distiller.teacher(image)
    s_logp, t_logp = log_softmax(logits_s.double().numpy(), axis=1), log_softmax(logits_t.double().numpy(), axis=1)
    ce = -s_logp[np.arange(len(target)), target.numpy()].mean()
    kd = (np.exp(t_logp) * (t_logp - s_logp)).sum(axis=1).mean()
    spectral = []
    for i_s, i_t in zip(student_taps, teacher_taps):
        s, t = feats_s["feats"][i_s].double().numpy(), feats_t["feats"][i_t].double().numpy()
        while s.shape[-1] > t.shape[-1]:
            s = np_pool_2x2(s)
        while t.shape[-1] > s.shape[-1]:
            t = np_pool_2x2(t)
        narrower = min(s.shape[1], t.shape[1])
        spectral.append(np_spectral_mse(np_pool_channels(s, narrower), np_pool_channels(t, narrower), remove_dc))
    return ce, kd, float(np.mean(spectral))


@pytest.mark.parametrize("student,teacher,remove_dc", [("resnet8", "wrn_16_2", False), ("wrn_16_2", "resnet8", True)])
def test_distiller_terms_against_numpy(student, teacher, remove_dc):
    """Taps with unequal sizes (16x16 against 8x8: pooled 2x2) and widths (16 against 32, 64 against
    128 or the reverse: the wider one pooled), weights other than the defaults."""
    student_taps, teacher_taps = [0, -1, -2, -1], [0, -2, -2, -1]
    distiller, _ = build("SPECTRALKD", [f"SPECTRALKD.STUDENT_TAPS={student_taps}", f"SPECTRALKD.TEACHER_TAPS={teacher_taps}",
                                        f"SPECTRALKD.REMOVE_DC={remove_dc}", "SPECTRALKD.LOSS.CE_WEIGHT=0.3",
                                        "SPECTRALKD.LOSS.KD_WEIGHT=0.7", "SPECTRALKD.LOSS.FEAT_WEIGHT=2.0"],
                         student=student, teacher=teacher)
    distiller.eval()  # BatchNorm on running statistics: the reference forward sees the same maps
    image, target = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 4, 9])
    _, losses = distiller.forward_train(image=image, target=target)
    ce, kd, spectral = reference_losses(distiller, image, target, student_taps, teacher_taps, remove_dc)
    assert losses["loss_ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)
    assert losses["loss_kd"].item() == pytest.approx(0.7 * kd, rel=1e-4)
    assert losses["loss_feat"].item() == pytest.approx(2.0 * spectral, rel=1e-4)
    assert distiller.get_extra_parameters() == 0


def test_token_student_against_numpy():
    """A tiny timm ViT student (its 48 x 8 x 8 token grids, the adapter's maps) and the CIFAR resnet8
    teacher (16 x 32 x 32 ... 64 x 8 x 8) at 32 px: the teacher's larger maps pooled down (4x4, 2x2),
    the student's 48 channels pooled to 16 and 32, the teacher's 64 to 48 (overlapping windows)."""
    cfg = build_cfg(None, ["DISTILLER.TYPE=SPECTRALKD", "DATASET.IMAGE_SIZE=32", "SPECTRALKD.REMOVE_DC=True"])
    torch.manual_seed(0)
    student, teacher = tiny("vit", 10), cifar_model_dict["resnet8"][0](num_classes=10)
    distiller = distiller_dict["SPECTRALKD"](student, teacher, cfg, num_data=8, num_classes=10).eval()
    image, target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([2, 7])
    _, losses = distiller.forward_train(image=image, target=target)
    taps = [-4, -3, -2, -1]
    spectral = reference_losses(distiller, image, target, taps, taps, remove_dc=True)[2]
    assert losses["loss_feat"].item() == pytest.approx(0.2 * spectral, rel=1e-4)


def test_remove_dc_drops_only_the_zero_frequency_term():
    distiller, _ = build("SPECTRALKD", ["SPECTRALKD.LOSS.FEAT_WEIGHT=1.0"])
    distiller.eval()
    image, target = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1])
    with_dc = distiller.forward_train(image=image, target=target)[1]["loss_feat"].item()
    distiller.remove_dc = True
    without_dc = distiller.forward_train(image=image, target=target)[1]["loss_feat"].item()
    taps = [-4, -3, -2, -1]
    assert without_dc == pytest.approx(reference_losses(distiller, image, target, taps, taps, True)[2], rel=1e-4)
    assert without_dc < with_dc  # ReLU maps: their means differ, so the DC terms carried part of the loss


@pytest.mark.parametrize("connector", ["pool", "conv"])
def test_gradients_reach_exactly_the_student_and_the_connectors(connector):
    distiller, _ = build("SPECTRALKD", [f"SPECTRALKD.CONNECTOR={connector}"])
    batch = {"image": torch.randn(4, 3, 16, 16), "target": torch.tensor([0, 3, 5, 9])}
    train_step(distiller, batch)  # student + the method's modules, none on the teacher, the teacher unchanged
    if connector == "pool":
        assert distiller.distiller_modules() == [] and distiller.get_extra_parameters() == 0
    else:  # resnet8 -> wrn_16_2, taps -4..-1: 16 -> 16 (no conv), 16 -> 32, 32 -> 64, 64 -> 128
        convs = [m for m in distiller.connectors if isinstance(m, torch.nn.Conv2d)]
        assert [(m.in_channels, m.out_channels) for m in convs] == [(16, 32), (32, 64), (64, 128)]
        assert distiller.get_extra_parameters() == 16 * 32 + 32 * 64 + 64 * 128


@pytest.mark.parametrize("opts,words", [
    (["SPECTRALKD.STUDENT_TAPS=[-1]"], "same, non-zero length"),
    (["SPECTRALKD.STUDENT_TAPS=[4]", "SPECTRALKD.TEACHER_TAPS=[0]"], "use indices from -4 to 3"),
    (["SPECTRALKD.CONNECTOR=linear"], "is not one of pool, conv"),
    (["SPECTRALKD.REMOVE_DC=True", "DATASET.IMAGE_SIZE=4"], "drop that pair"),  # the last stages are 1x1 at 4 px
])
def test_refusals_name_the_fix(opts, words):
    with pytest.raises(ConfigError, match=words) as refused:
        build("SPECTRALKD", opts, size=4 if "DATASET.IMAGE_SIZE=4" in opts else 16)
    assert "\n" not in str(refused.value)


def test_digits_config_trains_through_tools_train(tmp_path, monkeypatch):
    """configs/digits/spectralkd.yaml through tools/train.py, run in this process as ``python
    tools/train.py`` runs it (runpy): one short epoch, the three losses finite, the teacher unchanged."""
    torch.manual_seed(0)
    teacher = cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()
    torch.save({"model": teacher}, tmp_path / "teacher.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "tools"))
    monkeypatch.setattr(sys, "argv", [TRAIN, "--cfg", os.path.join(REPO_ROOT, "configs", "digits", "spectralkd.yaml"),
                                      f"LOG.PREFIX={tmp_path}", f"DISTILLER.TEACHER_WEIGHTS={tmp_path / 'teacher.pth'}",
                                      "SOLVER.EPOCHS=1", "DATASET.TRAIN_FRACTION=0.1", "DATASET.IMAGE_SIZE=8",
                                      "EXPERIMENT.NAME=spectral"])
    try:
        runpy.run_path(TRAIN, run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), exit_.code
    run = tmp_path / "quickstart" / "spectral"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(record[term]) and record[term] > 0 for term in ("loss_ce", "loss_kd", "loss_feat"))
    state = torch.load(run / "latest", weights_only=True)["model"]
    for key, value in teacher.items():
        assert torch.equal(state[f"teacher.{key}"], value), key
