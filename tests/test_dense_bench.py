"""The dense form of tools/bench.py (mdistiller_dense/benchmark.py) on the shapes PSPNet and FCOS
pairs: parameters of the student, the teacher and the method's modules against sums worked out here,
FLOPs of a conv against the formula and of the student against a per-conv count by hooks, the JSON
and the Markdown table written and read back. Step times are measured, never compared."""

import json
import os
import sys

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from conftest import REPO_ROOT
from mdistiller_dense.benchmark import forward_flops
from mdistiller_dense.config import build_dense_cfg
from mdistiller_dense.models import build_dense_model
from test_pspnet import _psp_params

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")
RESNET18_NO_FC = 11_689_512 - 513_000  # torchvision resnet18 minus its fc (512 x 1000 + 1000)
RESNET34_NO_FC = 21_797_672 - 513_000


def tiny(tmp_path):
    return ["DATASET.ROOT", str(tmp_path / "data"), "DATASET.NUM_TRAIN", "4", "DATASET.NUM_VAL", "2",
            "DATASET.SHAPES.IMAGE_SIZE", "64", "DATASET.SHAPES.MIN_OBJECT_SIZE", "12",
            "DATASET.SHAPES.MAX_OBJECT_SIZE", "28", "SOLVER.BATCH_SIZE", "2", "DATASET.CROP_SIZE", "0",
            "MODEL.MIN_SIZE", "64", "MODEL.MAX_SIZE", "64", "SOLVER.AMP", "False", "CANKD.LEVELS", "3",
            "DISTILLER.TEACHER_WEIGHTS", str(tmp_path / "no_teacher.pth")]


def conv_flops(model: nn.Module, inputs) -> int:
    """2 x multiply-adds of every Conv2d / Linear in one eval forward, by hooks on the modules."""
    counts = []

    def hook(module, args, out):
        if isinstance(module, nn.Conv2d):
            counts.append(2 * out.numel() * module.in_channels // module.groups * module.kernel_size[0] *
                          module.kernel_size[1])
        else:
            counts.append(2 * out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return sum(counts)


def test_forward_flops_of_one_conv_is_the_formula():
    """2 * N * C_out * H_out * W_out * C_in * k * k, H_out = floor((H + 2p - k) / s) + 1."""
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    h_out, w_out = (11 + 2 - 3) // 2 + 1, (14 + 2 - 3) // 2 + 1
    assert forward_flops(conv, torch.zeros(2, 3, 11, 14)) == 2 * 2 * 8 * h_out * w_out * 3 * 3 * 3
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert forward_flops(grouped, torch.zeros(1, 8, 5, 5)) == 2 * 8 * 5 * 5 * (8 // 4) * 3 * 3


def test_dense_configs_are_told_from_classification_ones():
    assert bench.is_dense_config(os.path.join(SHAPES, "pspnet_freekd.yaml"))  # through its _BASE_
    assert bench.is_dense_config(os.path.join(REPO_ROOT, "configs", "cityscapes", "cankd", "pspnet_r101_r18.yaml"))
    assert not bench.is_dense_config(os.path.join(REPO_ROOT, "configs", "digits", "kd.yaml"))


def read_table(path):
    """{first cell: [other cells]} of every row of the Markdown tables in the file."""
    rows = {}
    for line in open(path).read().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def run_bench(tmp_path, config, methods):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    bench.main(["--cfg", os.path.join(SHAPES, config), *tiny(tmp_path), "--methods", methods, "--iters", "1",
                "--warmup", "0", "--json", str(out), "--table", str(md)])
    return json.loads(out.read_text()), read_table(md)


def check_table(record, rows):
    """Every measured row of the table says what the JSON holds, at the table's precision."""
    for name, entry in [("student alone (task loss)", record["student_only"]),
                        ("floor (student + teacher backbone)", record["floor"]), *record["methods"].items()]:
        cells = rows[name]
        assert number(cells[1]) == pytest.approx(entry["step_ms"], abs=0.05), name
        assert number(cells[3]) == pytest.approx(entry["gflops_per_img"], abs=5e-4), name
        assert number(cells[5]) == entry["extra_params"], name
        assert entry["img_per_s"] == pytest.approx(record["batch_size"] / (entry["step_ms"] / 1e3))
    for role in ("student", "teacher"):
        cells = rows[role]
        assert cells[0] == record[role] and number(cells[1]) == record["models"][role]["params"]


@pytest.mark.slow
def test_pspnet_pair_parameters_flops_and_table(tmp_path):
    record, rows = run_bench(tmp_path, "pspnet_freekd.yaml", "FREEKD,CANKD,CWD")
    cfg = build_dense_cfg(os.path.join(SHAPES, "pspnet_freekd.yaml"), tiny(tmp_path))
    assert record["task"] == "segmentation" and record["batch_size"] == 2 and record["input_size"] == [64, 64]
    models = record["models"]
    assert models["student"]["params"] == _psp_params(RESNET18_NO_FC, 512, 128, 64, 4)  # background + 3 shapes
    assert models["teacher"]["params"] == _psp_params(RESNET34_NO_FC, 512, 128, 64, 4)
    c = 512  # layer4 of both
    s = cfg.FREEKD
    assert record["methods"]["FREEKD"]["extra_params"] == (c * c + c) + (s.DWT_LEVELS + 1) * s.TOKENS * c  # align + prompt
    half = c // 2  # CanKD's non-local block: theta, phi, g (C -> C/2), W (C/2 -> C) + BatchNorm; no align (512 = 512)
    assert record["methods"]["CANKD"]["extra_params"] == 3 * (c * half + half) + (half * c + c) + 2 * c
    assert record["methods"]["CWD"]["extra_params"] == 0
    assert record["methods"]["CWD"]["method_gflops_per_img"] == pytest.approx(0.0, abs=1e-9)  # softmax and KL: no matmul
    assert record["methods"]["CANKD"]["method_gflops_per_img"] > 0
    student = build_dense_model(cfg.DISTILLER.STUDENT, 4, cfg.MODEL)
    images = torch.zeros(2, 3, 64, 64)
    assert models["student"]["forward_gflops_per_img"] * 1e9 * 2 == pytest.approx(conv_flops(student, images), rel=1e-9)
    for entry in record["methods"].values():
        assert entry["overhead_vs_floor"] > 0 and entry["overhead_vs_student"] > 0 and entry["peak_mem_mb"] > 0
    check_table(record, rows)


@pytest.mark.slow
def test_fcos_pair_parameters_and_table(tmp_path):
    record, rows = run_bench(tmp_path, "freekd.yaml", "FREEKD,PKD")
    assert record["task"] == "detection" and record["student"] == "fcos_resnet18_fpn"
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    expected = sum(p.numel() for p in FCOS(backbone, num_classes=4).parameters())  # torchvision's own builder
    assert record["models"]["student"]["params"] == expected
    # The teacher detector's BatchNorm is frozen (FrozenBatchNorm2d: its affine terms are buffers, not parameters).
    teacher = resnet_fpn_backbone(backbone_name="resnet34", weights=None, norm_layer=FrozenBatchNorm2d,
                                  trainable_layers=5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    assert record["models"]["teacher"]["params"] == sum(p.numel() for p in FCOS(teacher, num_classes=4).parameters())
    s = build_dense_cfg(os.path.join(SHAPES, "freekd.yaml")).FREEKD
    levels = 5  # P3-P7, 256 channels each: an align conv and a prompt per level
    assert record["methods"]["FREEKD"]["extra_params"] == levels * ((256 * 256 + 256) + (s.DWT_LEVELS + 1) * s.TOKENS * 256)
    assert record["methods"]["PKD"]["extra_params"] == 0
    check_table(record, rows)
