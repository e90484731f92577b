"""Every dense recipe under configs/coco, configs/cityscapes and configs/shapes merges strictly into
the dense config (every key exists) and its student and teacher build at full size on the meta device;
the papers' values the configs cite are checked here (FreeKD supplement A, CanKD supplement Sec. 1, 2-5).
"""

import glob
import os

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from mdistiller_dense.config import DENSE_CFG, build_dense_cfg
from mdistiller_dense.models import build_dense_model, task_of

FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "coco", "*", "*.yaml"))
               + glob.glob(os.path.join(REPO_ROOT, "configs", "cityscapes", "*", "*.yaml"))
               + [p for p in glob.glob(os.path.join(REPO_ROOT, "configs", "shapes", "*.yaml"))
                  if not os.path.basename(p).startswith("sam_")])  # SAM's: tests/test_sam.py


def rel(path: str) -> str:
    return os.path.relpath(path, os.path.join(REPO_ROOT, "configs"))


def _known(key: str) -> bool:
    node = DENSE_CFG
    for part in key.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def test_every_recipe_is_found():
    assert len(FILES) == 21 + 5 + 8 + 9 + 2 + 1 + 6 + 4  # + 9 COCO (RepPoints, CanKD 2-GPU, AFPKD), 2 Cityscapes,
    # shapes AFPKD; + 6 shapes RepPoints (teacher, student, FREEKD, CANKD, CWD, PKD); + 4 shapes PSPNet


@pytest.mark.slow  # 63 full-size meta builds, about 20 s: make test and CI run them, make test-fast does not
@pytest.mark.parametrize("path", FILES, ids=rel)
def test_recipe_merges_and_builds_on_meta(path):
    cfg = build_dense_cfg(path)
    student, teacher = cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER
    assert task_of(student) == task_of(teacher)
    num_classes = 91 if task_of(student) == "detection" else max(cfg.DATASET.NUM_CLASSES, 4)
    with torch.device("meta"):
        for name in (student, teacher):
            model = build_dense_model(name, num_classes, cfg.MODEL)
            assert sum(p.numel() for p in model.parameters()) > 1_000_000


def _cfg(name: str):
    """A recipe's raw YAML, as written (before the defaults are merged)."""
    with open(os.path.join(REPO_ROOT, "configs", name)) as f:
        return yaml.safe_load(f)


def test_freekd_weights_are_the_supplements():
    """Supplement A.1: Faster R-CNN 1 + regression 1; RetinaNet 5, FCOS 10, RepPoints 10. A.2: 5 on the segmenters."""
    expected = {"coco/freekd/fasterrcnn_r101_r50.yaml": (1.0, 1.0), "coco/freekd/retinanet_r101_r50.yaml": (5.0, 1.0),
                "coco/freekd/fcos_r101_r50.yaml": (10.0, 1.0), "coco/freekd/reppoints_x101_r50.yaml": (10.0, 1.0),
                "cityscapes/freekd/pspnet_r101_r18.yaml": (5.0, 0.0),
                "cityscapes/freekd/deeplabv3_r101_r18.yaml": (5.0, 0.0)}
    for name, (weight, reg) in expected.items():
        section = _cfg(name)["FREEKD"]
        assert (section["WEIGHT"], section["REG_WEIGHT"]) == (weight, reg), name
    reppoints = _cfg("coco/freekd/reppoints_x101_r50.yaml")
    assert reppoints["MODEL"]["DCN_STAGES"] == [3, 4, 5]
    assert reppoints["DISTILLER"]["TEACHER"] == "reppoints_resnext101_32x4d_fpn"


@pytest.mark.parametrize("method", ["freekd", "cankd"])
@pytest.mark.parametrize("kind", ["pspnet", "deeplabv3"])
def test_cityscapes_recipes_are_80k_poly_iterations(method, kind):
    raw = _cfg(f"cityscapes/{method}/{kind}_r101_r18.yaml")
    solver, data = raw["SOLVER"], raw["DATASET"]
    assert (solver["ITERS"], solver["LR"], solver["LR_SCHEDULER"], solver["WEIGHT_DECAY"]) == (80000, 0.01, "poly",
                                                                                               0.0005)
    assert (data["SCALE_RANGE"], data["CROP_SIZE"], data["FLIP_PROB"]) == ([0.5, 2.0], 512, 0.5)
    assert raw["MODEL"]["DEEP_STEM"] is True
    assert all(_known(f"SOLVER.{key}") for key in solver)


def test_cankd_reppoints_ablations_and_two_gpu_schedule():
    for name, (pool, residual) in {"reppoints_x101_r50": (2, True), "reppoints_x101_r50_pool4": (4, True),
                                   "reppoints_x101_r50_pool8": (8, True),
                                   "reppoints_x101_r50_no_residual": (2, False)}.items():
        raw = _cfg(f"coco/cankd/{name}.yaml")
        assert (raw["CANKD"]["POOL_SIZE"], raw["CANKD"]["RESIDUAL"]) == (pool, residual), name
        solver = raw["SOLVER"]
        assert (solver["LR"], solver["BATCH_SIZE"], solver["EPOCHS"], solver["LR_DECAY_STAGES"]) == \
               (0.005, 4, 24, [16, 22])
    for det in ("retinanet", "fcos", "fasterrcnn"):
        cfg = build_dense_cfg(os.path.join(REPO_ROOT, "configs", "coco", "cankd", f"{det}_r101_r50_2gpu.yaml"))
        assert (cfg.SOLVER.LR, cfg.SOLVER.BATCH_SIZE, list(cfg.SOLVER.LR_DECAY_STAGES)) == (0.005, 4, [16, 22])
