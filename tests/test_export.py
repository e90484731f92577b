"""tools/export.py and mdistiller.export: deployable files, TorchScript and ONNX that give
the checkpoint's logits; methods predicting through extra modules keep those and only those."""

import json
import os

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.distillers.kd import KD
from mdistiller.engine.cfg import build_cfg, dump_cfg
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.export import (export_checkpoint, load_deployable, load_torchscript, prune_teacher,
                                      teacher_modules_used)
from mdistiller.errors import CheckpointError
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.slow

DIGITS_STUDENT = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")
EXPORT = os.path.join(REPO_ROOT, "tools", "export.py")


def build(method, **extra):
    cfg = build_cfg(DIGITS_STUDENT, [f"DISTILLER.TYPE={method}", "DATASET.IMAGE_SIZE=8",
                                     *[f"{k}={v}" for k, v in extra.items()]])
    torch.manual_seed(0)
    student = cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=10)
    teacher = cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=10)
    distiller = distiller_dict[method](student, teacher, cfg, num_data=10, num_classes=10)
    # Trained-looking BatchNorm statistics, so eval mode is not the identity.
    for module in distiller.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return cfg, distiller.eval()


def test_student_file_exports_reproduce_its_logits(tmp_path, torch_single_thread):
    cfg, distiller = build("KD")
    path = str(tmp_path / "student_best")
    save_checkpoint({"model": distiller.student.state_dict(), "epoch": 3, "acc": 50.0, "cfg": dump_cfg(cfg)}, path)
    results = export_checkpoint(path, str(tmp_path / "out"), ("deploy", "torchscript"), batch_size=5)
    assert all(r["ok"] for r in results.values()), results
    deployed = load_checkpoint(results["deploy"]["path"])
    assert set(deployed["model"]) == {f"model.{k}" for k in distiller.student.state_dict()}
    image = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = distiller.student(image)[0]
        assert torch.equal(load_deployable(results["deploy"]["path"])(image), expected)
        assert torch.allclose(load_torchscript(results["torchscript"]["path"])(image), expected, atol=1e-5)


def test_sfakd_exports_keep_its_heads_and_the_teacher_classifier_only(tmp_path, torch_single_thread):
    cfg, distiller = build("SFAKD")
    path = str(tmp_path / "best")
    save_checkpoint({"model": distiller.state_dict(), "epoch": 3, "cfg": dump_cfg(cfg)}, path)
    results = export_checkpoint(path, str(tmp_path / "out"), ("deploy", "torchscript"), batch_size=4)
    assert set(results) == {"deploy", "torchscript"}
    assert all(r["ok"] for r in results.values()), results

    keys = set(load_checkpoint(results["deploy"]["path"])["model"])
    full = {f"distiller.{k}" for k in distiller.state_dict()}
    expected = {k for k in full if not k.startswith("distiller.teacher.")} | {
        k for k in full if k.startswith("distiller.teacher.fc.")}
    assert keys == expected and any(k.startswith("distiller.sfa.") for k in keys)

    image = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        reference = distiller.forward_test(image)
        projected = distiller.transfer(distiller.sfa(distiller.student(image)[1]["feats"][-1]))
        by_hand = projected.mean(dim=(2, 3)) @ distiller.teacher.fc.weight.T + distiller.teacher.fc.bias
        assert torch.allclose(reference, by_hand, atol=1e-5)
        assert torch.allclose(load_deployable(results["deploy"]["path"])(image), reference, atol=1e-6)
        assert torch.allclose(load_torchscript(results["torchscript"]["path"])(image), reference, atol=1e-5)
        assert not torch.allclose(distiller.student(image)[0], reference, atol=1e-3)

    student_only = str(tmp_path / "student_best")
    save_checkpoint({"model": distiller.student.state_dict(), "cfg": dump_cfg(cfg)}, student_only)
    with pytest.raises(CheckpointError, match="full checkpoint"):
        export_checkpoint(student_only, str(tmp_path / "no"), ("deploy",))


def test_sfakd_onnx_export_gives_forward_test_logits(tmp_path, torch_single_thread):
    """The ONNX part alone: skipped (only it) when the ONNX packages are missing."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package, reason="requirements.txt installs onnx, onnxscript and onnxruntime")
    import onnxruntime

    cfg, distiller = build("SFAKD")
    path = str(tmp_path / "best")
    save_checkpoint({"model": distiller.state_dict(), "epoch": 3, "cfg": dump_cfg(cfg)}, path)
    results = export_checkpoint(path, str(tmp_path / "out"), ("onnx",), batch_size=4)
    assert results["onnx"]["ok"], results
    image = torch.randn(6, 3, 8, 8)  # a batch size other than the export's: the batch axis is dynamic
    with torch.no_grad():
        reference = distiller.forward_test(image)
    session = onnxruntime.InferenceSession(results["onnx"]["path"], providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
    assert torch.allclose(onnx_logits, reference, atol=1e-4)


class WholeTeacherKD(KD):
    """A prediction path that runs the whole teacher (the pruning must then keep all of it)."""

    def forward_test(self, image):
        return self.student(image)[0] + self.teacher(image)[0]


def test_pruning_keeps_exactly_what_forward_test_calls(torch_single_thread):
    cfg, sfakd = build("SFAKD")
    assert teacher_modules_used(sfakd, 8) == ["fc"]
    cfg, kd = build("KD")
    whole = WholeTeacherKD(kd.student, kd.teacher, cfg)
    assert teacher_modules_used(whole, 8) == [""]
    assert prune_teacher(whole, 8).teacher.state_dict().keys() == kd.teacher.state_dict().keys()
    pruned = prune_teacher(sfakd, 8)
    assert set(pruned.teacher.state_dict()) == {"fc.weight", "fc.bias"}
    image = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(pruned.forward_test(image), sfakd.forward_test(image))


@pytest.mark.e2e
def test_export_tool_writes_and_checks(tool, tmp_path):
    cfg, distiller = build("CATKD")
    path = tmp_path / "student_best"
    save_checkpoint({"model": distiller.student.state_dict(), "cfg": dump_cfg(cfg)}, str(path))
    result = tool(EXPORT, "-c", str(path), "--formats", "deploy,torchscript", "-bs", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "export" / "student_best.export.json").read_text())
    assert set(report) == {"deploy", "torchscript"} and all(r["ok"] and r["max_abs_diff"] < 1e-4 for r in report.values())
    assert "torchscript" in result.stdout and "ok" in result.stdout
