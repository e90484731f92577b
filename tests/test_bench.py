"""tools/bench.py: the JSON it writes, FLOPs against a count by hand, method selection, and the
in-memory loader's throughput against torchvision's pipeline."""

import json
import os
import sys

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.benchmark import loader_throughput
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.models import cifar_model_dict

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")

KD_DIGITS = os.path.join(REPO_ROOT, "configs", "digits", "kd.yaml")


def forward_flops(model: nn.Module, size: int):
    """Per image: 2 * multiply-adds of every conv and linear layer, and of the first conv alone."""
    counts = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = output[0].numel() * module.in_channels // module.groups * kh * kw
        else:
            macs = module.in_features * module.out_features
        counts.append(2 * macs)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return sum(counts), counts[0]


def test_bench_json_and_flops(tmp_path, capsys):
    out = tmp_path / "bench.json"
    torch.backends.cudnn.benchmark = False
    bench.main(["--cfg", KD_DIGITS, "DATASET.IMAGE_SIZE=8", "SOLVER.BATCH_SIZE=8", "--iters", "2", "--warmup", "1",
                "--baseline", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["batch_size"] == 8
    assert record["settings"]["cudnn_benchmark"] is True and torch.backends.cudnn.benchmark  # as training sets it
    for key in ("student_only", "floor", "distiller"):
        entry = record[key]
        assert entry["img_per_s"] == pytest.approx(8 / (entry["step_ms"] / 1e3)) and entry["peak_mem_mb"] > 0
    assert record["distiller"] == record["methods"]["KD"] and record["distiller"]["extra_params"] == 0
    assert record["overhead_vs_floor"] > 0 and record["overhead_vs_student"] > 0
    eager = record["distiller"]["variants"]["fp32 eager, no fast path"]
    assert eager["speedup"] == pytest.approx(record["distiller"]["img_per_s"] / eager["img_per_s"])

    # A training step: forward F, and backward 2F but for the image's own gradient at the first conv.
    student, first = forward_flops(cifar_model_dict["resnet8"][0](num_classes=10), 8)
    teacher, _ = forward_flops(cifar_model_dict["wrn_16_2"][0](num_classes=10), 8)
    assert record["student_only"]["gflops_per_img"] * 1e9 == pytest.approx(3 * student - first, rel=1e-6)
    assert (record["floor"]["gflops_per_img"] - record["student_only"]["gflops_per_img"]) * 1e9 == pytest.approx(
        teacher, rel=1e-6)  # folding BN into the teacher's convs adds no FLOPs
    printed = capsys.readouterr().out
    assert "| KD |" in printed and "floor (student + teacher inference)" in printed


def test_method_selection():
    registered = sorted(m for m in distiller_dict if m != "NONE")
    assert bench.selected_methods("KD", True, None) == registered
    assert bench.selected_methods("KD", False, None) == ["KD"]
    assert bench.selected_methods("NONE", False, "KD") == ["KD"]
    with pytest.raises(ConfigError, match="DISTILLER.TYPE is NONE"):
        bench.selected_methods("NONE", False, None)


@pytest.mark.slow
def test_loader_throughput_record():
    """The record's shape and arithmetic; the speed-up itself is measured, never asserted (docs/performance.md)."""
    cfg = build_cfg(None, ["DATASET.NUM_WORKERS=0", "DATASET.ROOT=/nonexistent"])
    data = loader_throughput(cfg, batches=10)
    assert data["source"] == "random uint8 images" and data["torchvision"]["workers"] == 0
    assert data["speedup"] == pytest.approx(data["fast_aug"]["img_per_s"] / data["torchvision"]["img_per_s"])
    assert data["fast_aug"]["img_per_s"] > 0 and data["torchvision"]["img_per_s"] > 0


def vit_forward_flops(size: int, patch: int, width: int, depth: int, classes: int) -> int:
    """Per image, a timm ViT's forward by hand: patch embedding, and per block the qkv, projection
    and MLP (4x) matmuls plus attention's two (L x L) products; the classifier."""
    patches = (size // patch) ** 2
    tokens = patches + 1  # the class token
    embed = 2 * patches * 3 * patch * patch * width
    block = 2 * tokens * width * (3 * width + width + 4 * width + 4 * width) + 2 * 2 * tokens * tokens * width
    return embed + depth * block + 2 * width * classes


def test_bench_on_a_vit_teacher_and_a_cnn_student(tmp_path):
    """A heterogeneous pair (a timm ViT teacher, resnet8) through tools/bench.py: student alone,
    floor and two methods timed; the floor adds the ViT's forward FLOPs, attention included."""
    out = tmp_path / "bench.json"
    vit = {"patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2}
    bench.main(["--cfg", KD_DIGITS, "DATASET.IMAGE_SIZE=8", "SOLVER.BATCH_SIZE=8", "DISTILLER.TEACHER_WEIGHTS=",
                "DISTILLER.TEACHER=timm:vit_tiny_patch16_224", *[f"MODEL.TEACHER_KWARGS.{k}={v}" for k, v in vit.items()],
                "--methods", "KD,OFA", "--iters", "1", "--warmup", "0", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["teacher"] == "timm:vit_tiny_patch16_224" and record["student"] == "resnet8"
    assert set(record["methods"]) == {"KD", "OFA"}
    for method, entry in record["methods"].items():
        assert "error" not in entry and entry["overhead_vs_floor"] > 0 and entry["overhead_vs_student"] > 0, method
    assert record["methods"]["KD"]["extra_params"] == 0 < record["methods"]["OFA"]["extra_params"]
    teacher = vit_forward_flops(8, vit["patch_size"], vit["embed_dim"], vit["depth"], 10)
    assert (record["floor"]["gflops_per_img"] - record["student_only"]["gflops_per_img"]) * 1e9 == pytest.approx(
        teacher, rel=1e-6)
