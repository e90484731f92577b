"""Helpers shared by several test modules (no test module imports another)."""

import math
import os
import signal

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_distiller
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.trainer import Trainer
from mdistiller.engine.utils import seed_everything
from mdistiller.models import cifar_model_dict

STUDENT_CFG = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")
WORKER = os.path.join(REPO_ROOT, "tests", "ddp_worker.py")


# -- Trainers on the digits data (tests of the trainer, resume, AMP, loggers, non-finite losses)
def make_trainer(tmp_path, *opts, name="run"):
    cfg = build_cfg(STUDENT_CFG, [f"LOG.PREFIX={tmp_path}", "SOLVER.AMP=False", "EXPERIMENT.DETERMINISTIC=True",
                                  "DATASET.IMAGE_SIZE=8", *opts])
    seed_everything(cfg.EXPERIMENT.SEED, True)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    distiller = build_distiller(cfg, num_data, num_classes)
    return Trainer(name, distiller, train_loader, val_loader, cfg)


def kd_trainer(tmp_path, name, epochs, loader_opts):
    teacher = tmp_path / "teacher.pth"
    if not teacher.exists():
        torch.manual_seed(1)
        torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher)
    return make_trainer(tmp_path, "DISTILLER.TYPE=KD", f"DISTILLER.TEACHER_WEIGHTS={teacher}",
                        f"SOLVER.EPOCHS={epochs}", *loader_opts, name=name)


def signal_at_call(trainer, call, signum=signal.SIGTERM):
    """Make the trainer's `call`-th forward pass send `signum` to this very process."""
    model, calls = trainer.train_model, [0]

    def forward(**kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return model(**kwargs)

    trainer.train_model = forward


def assert_same_state(a, b):
    assert a["epoch"] == b["epoch"] and a["best_acc"] == b["best_acc"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for index in state_a:
        assert state_a[index].keys() == state_b[index].keys()
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)


# -- Tools run as subprocesses
def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def assert_user_error(result, *fragments: str) -> None:
    """Exit status 2 and one `error: ...` line on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- Processes of a two-rank job (DDP on gloo)
def process_env() -> dict:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def communicate_all(procs, timeout: int = 300):
    """(exit status, stdout, stderr) of each process; any still running after `timeout` is killed."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


# -- FreeKD's stage-1 map by its formula, with PyWavelets (prompt and stage-1 tests)
def pywt_prompted_map(x, tokens):
    """``IDWT(sum_t sigmoid(P_k R_k) * band_k)`` of maps x (B, C, H, W) in numpy, PyWavelets' Haar with
    zero padding: token set 0 masks LL_L, token set j the three high bands of level j (finest j = 1),
    R_k the band (high bands: the three summed); cropped back to (H, W). `tokens` (L + 1, T, C)."""
    levels = len(tokens) - 1

    def masked(band, mask_input, token_set):
        mask = 1.0 / (1.0 + np.exp(-np.einsum("tc,bchw->bthw", token_set, mask_input)))  # (B, T, h, w)
        return band * mask.sum(axis=1, keepdims=True)

    low, *details = pywt.wavedec2(x, "haar", mode="zero", level=levels)  # details: level L first, level 1 last
    new_low = masked(low, low, tokens[0])
    new_details = [tuple(masked(band, sum(level), tokens[j]) for band in level)
                   for j, level in zip(range(levels, 0, -1), details)]
    return pywt.waverec2([new_low] + new_details, "haar", mode="zero")[..., :x.shape[-2], :x.shape[-1]]


# -- FreeKD's band loss in the authors' broadcast form (FreeKD and AFPKD tests)
def direct_level_loss(masks, teacher, student, low_band, weights=None):
    """The authors' broadcast form: L1 (mean) between M_t * a and M_t * b over (B, T, C, [3,] h, w)."""
    total = 0.0
    sets = list(zip(masks, teacher.band_sets(), student.band_sets()))
    for k, (m, a, b) in enumerate(sets):
        if k == 0 and not low_band:
            continue
        shape = (m.shape[0], m.shape[1], 1) + ((1,) if a.dim() == 5 else ()) + m.shape[-2:]
        m = m.reshape(shape)
        if weights is not None:
            w = weights.reshape(weights.shape[0], 1, weights.shape[1], *([1] * (a.dim() - 2)))
            a, b = a.unsqueeze(1) * w, b.unsqueeze(1) * w
        else:
            a, b = a.unsqueeze(1), b.unsqueeze(1)
        total = total + F.l1_loss(m * b, m * a)
    return total


def finish(procs, timeout: int = 300):
    results = communicate_all(procs, timeout)
    for code, out, err in results:
        assert code == 0, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    return [out for _, out, _ in results]


def poison(trainer, from_call, image_nan=False, term="loss_kd", value=math.inf):
    """From the `from_call`-th forward pass on: a NaN input image (so BatchNorm statistics turn NaN
    too) or the loss term `term` replaced by `value`."""
    model, calls = trainer.train_model, [0]

    def forward(image, **kwargs):
        calls[0] += 1
        bad = calls[0] >= from_call
        preds, losses = model(image=image * math.nan if bad and image_nan else image, **kwargs)
        if bad and not image_nan:
            losses = dict(losses, **{term: losses[term] * 0 + value})
        return preds, losses

    trainer.train_model = forward
