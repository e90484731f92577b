"""The pictures (tools/visualize.py, mdistiller/experiments/pictures.py): the saliency against numpy,
the confusion matrix against scikit-learn's, every picture written, opened and of its size."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from helpers import assert_ok, assert_user_error
from mdistiller.experiments import pictures

VISUALIZE = os.path.join(REPO_ROOT, "tools", "visualize.py")
TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")


def test_saliency_is_freekd_eq_15_16_against_numpy():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    tau = 0.5
    got = pictures.saliency(x, tau).numpy()
    for b in range(2):
        mean = x[b].numpy().mean(axis=0).reshape(-1) / tau            # eq. 15, then / tau
        soft = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        np.testing.assert_allclose(got[b], (3 * 4 * soft).reshape(3, 4), rtol=1e-5)
        assert got[b].sum() == pytest.approx(12.0)


@pytest.mark.slow
def test_the_normalised_confusion_is_scikit_learns():
    from sklearn.metrics import confusion_matrix as sk_confusion

    from mdistiller_dense.evaluation import confusion_matrix

    rng = np.random.default_rng(0)
    targets, predicted = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    targets[targets == 5] = 4  # a class never true: its row stays 0
    counts = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(targets), 6, ignore_index=-1).numpy()
    expected = np.nan_to_num(sk_confusion(targets, predicted, labels=range(6), normalize="true"))
    np.testing.assert_allclose(pictures.normalized_confusion(counts), expected)
    other = pictures.normalized_confusion(np.eye(6) * 3)
    np.testing.assert_allclose(pictures.diagonal_gain(pictures.normalized_confusion(counts), other),
                               np.diagonal(expected) - 1.0)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher, a student alone and a KD student on the digits at 8 px, one epoch each."""
    from conftest import run_tool_in_process

    tmp = tmp_path_factory.mktemp("visualize")
    common = ["LOG.PREFIX", str(tmp), "EXPERIMENT.PROJECT", "v", "SOLVER.EPOCHS", "1", "DATASET.IMAGE_SIZE", "8",
              "DATASET.TRAIN_FRACTION", "0.25", "SOLVER.AMP", "False"]
    digits = os.path.join(REPO_ROOT, "configs", "digits")
    assert_ok(run_tool_in_process(TRAIN, "--cfg", os.path.join(digits, "teacher.yaml"), *common,
                                  "EXPERIMENT.NAME", "teacher", cwd=str(tmp)))
    teacher = str(tmp / "v" / "teacher" / "student_best")
    for name, config in (("alone", "student.yaml"), ("kd", "kd.yaml")):
        assert_ok(run_tool_in_process(TRAIN, "--cfg", os.path.join(digits, config), *common, "EXPERIMENT.NAME", name,
                                      "DISTILLER.TEACHER_WEIGHTS", teacher, cwd=str(tmp)))
    return tmp, {name: str(tmp / "v" / name / "student_best") for name in ("teacher", "alone", "kd")}


@pytest.mark.e2e
def test_every_picture_is_written_and_of_its_size(tool, tool_in_process, runs):
    tmp, ckpt = runs
    out = tmp / "pictures"
    three = ["-c", ckpt["kd"], "--student", ckpt["alone"], "--out", str(out), "--images", "3", "SOLVER.AMP", "False"]
    assert_ok(tool(VISUALIZE, "saliency", *three, "--stages", "2,3", cwd=str(tmp)))
    # 3 rows; input + 3 models x 2 stages
    assert png_size(out / "saliency.png") == pictures.grid_size(3, 7) == (1120, 530)
    assert_ok(tool_in_process(VISUALIZE, "cam", *three, cwd=str(tmp)))
    assert png_size(out / "cam.png") == pictures.grid_size(3, 1 + 3 * 3)   # resnet8: layer1-3; wrn_16_2: block1-3
    assert_ok(tool_in_process(VISUALIZE, "confusion", *three, cwd=str(tmp)))
    assert png_size(out / "confusion.png") == pictures.grid_size(3, 9) == (1440, 530)
    record = json.loads((out / "confusion.json").read_text())
    assert len(record["diagonal_gain"]) == 10 and "| class |" in (out / "confusion.md").read_text()
    runs_dirs = [os.path.dirname(ckpt[name]) for name in ("teacher", "alone", "kd")]
    curves = tool_in_process(VISUALIZE, "curves", *sum((["-c", d] for d in runs_dirs), []), "--out", str(out),
                             cwd=str(tmp))
    assert_ok(curves)
    assert png_size(out / "curves.png") == (700, 420)


@pytest.mark.e2e
def test_poi_draws_a_grid_per_distilled_map_of_a_prompt_file(tool_in_process, runs):
    from prompt_files import write_prompt_file

    from mdistiller.engine.build import build_teacher
    from mdistiller.engine.cfg import build_cfg

    tmp, ckpt = runs
    prompts = str(tmp / "prompts.pth")
    cfg = build_cfg(os.path.join(REPO_ROOT, "configs", "digits", "freekd.yaml"),
                    ["DATASET.IMAGE_SIZE=8", f"DISTILLER.TEACHER_WEIGHTS={ckpt['teacher']}", "FREEKD.DWT_LEVELS=1",
                     f"FREEKD.PROMPT_PATH={prompts}"])
    write_prompt_file(cfg, build_teacher(cfg, 10))
    out = tmp / "poi"
    result = tool_in_process(VISUALIZE, "poi", "-c", ckpt["kd"], "--teacher", ckpt["teacher"], "--prompts", prompts,
                             "--images", "2", "--out", str(out), cwd=str(tmp))
    assert_ok(result)
    # the last two maps of wrn_16_2 (FREEKD.NUM_STAGES 2); input + 3 columns per token (2 tokens)
    assert sorted(os.listdir(out)) == ["poi_level2.png", "poi_level3.png"]
    for name in os.listdir(out):
        assert png_size(out / name) == pictures.grid_size(2, 7)


@pytest.mark.e2e
def test_visualize_bad_input_is_one_line(tool_in_process, runs):
    tmp, ckpt = runs
    assert_user_error(tool_in_process(VISUALIZE, "confusion", "-c", ckpt["kd"], "--out", str(tmp / "p")), "--student")
    assert_user_error(tool_in_process(VISUALIZE, "saliency", "-c", ckpt["kd"], "--out", str(tmp / "p"),
                                      "--stages", "9"), "--stages 9")
    assert_user_error(tool_in_process(VISUALIZE, "poi", "-c", ckpt["kd"], "--out", str(tmp / "p")), "prompt file")


@pytest.mark.e2e
def test_dense_saliency_of_fpn_levels(tool_in_process, tmp_path):
    from dense_helpers import SHAPES_OPTS, dense_cfg

    from mdistiller_dense.data import CATEGORIES
    from mdistiller_dense.models import build_dense_model

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        detector = build_dense_model("fcos_resnet18_fpn", len(CATEGORIES) + 1, dense_cfg(tmp_path, "NONE").MODEL)
        paths.append(str(tmp_path / f"detector{seed}.pth"))
        torch.save({"model": detector.state_dict()}, paths[-1])
    out = tmp_path / "dense"
    result = tool_in_process(VISUALIZE, "saliency", "--cfg", os.path.join(REPO_ROOT, "configs", "shapes", "student.yaml"),
                             "-c", paths[0], "--student", paths[1], "--images", "2", "--stages", "1,2,3", "--out", str(out),
                             *SHAPES_OPTS, "DATASET.ROOT", str(tmp_path / "data"), "DISTILLER.STUDENT", "fcos_resnet18_fpn",
                             cwd=str(tmp_path))
    assert_ok(result)
    assert png_size(out / "saliency.png") == pictures.grid_size(2, 1 + 2 * 3)
