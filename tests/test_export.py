"""tools/export.py and mdistiller.export: deployable files, TorchScript, torch.export and ONNX that
give the checkpoint's logits; methods predicting through extra modules keep those and only those;
timm models (a ViT, a distilled DeiT under DEIT) rebuilt with their kwargs."""

import json
import os
import runpy

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.distillers.kd import KD
from mdistiller.engine.build import build_distiller, build_role_model
from mdistiller.engine.cfg import build_cfg, dump_cfg
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller import export as export_module
from mdistiller.export import (export_checkpoint, failed_formats, load_deployable, load_program, load_torchscript,
                               prune_teacher, teacher_modules_used)
from mdistiller.errors import CheckpointError
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.slow

DIGITS_STUDENT = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")
DIGITS_VIT = os.path.join(REPO_ROOT, "configs", "digits", "hetero", "vit_teacher.yaml")  # TYPE NONE, a timm ViT
DIGITS_DEIT = os.path.join(REPO_ROOT, "configs", "digits", "deit.yaml")
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


def test_torchscript_that_cannot_be_traced_is_replaced_by_torch_export(tmp_path, monkeypatch, capsys,
                                                                      torch_single_thread):
    cfg, distiller = build("KD")
    path = str(tmp_path / "student_best")
    save_checkpoint({"model": distiller.student.state_dict(), "cfg": dump_cfg(cfg)}, path)

    def untraceable(model, example, target):
        raise RuntimeError("Tracer cannot infer type of output")

    monkeypatch.setattr(export_module, "export_torchscript", untraceable)
    monkeypatch.syspath_prepend(os.path.dirname(EXPORT))
    export_tool = runpy.run_path(EXPORT)  # tools/export.py's main, in this process (the patch applies)
    export_tool["main"](["-c", path, "-o", str(tmp_path / "out"), "--formats", "deploy,torchscript", "-bs", "3"])
    printed = capsys.readouterr().out
    assert "torchscript  not written (RuntimeError: Tracer cannot infer type of output); pt2 written instead" in printed
    assert "student_best.pt2" in printed and "MISMATCH" not in printed
    results = json.loads((tmp_path / "out" / "student_best.export.json").read_text())
    assert results["torchscript"]["path"] is None and results["torchscript"]["replaced_by"] == "pt2"
    assert "Tracer cannot infer" in results["torchscript"]["error"]
    assert results["pt2"]["ok"] and failed_formats(results) == []
    assert not (tmp_path / "out" / "student_best.torchscript.pt").exists()
    image = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_program(results["pt2"]["path"])(image), distiller.student(image)[0], atol=1e-5)


def _timm_model(cfg, num_classes):
    """The run's timm model built by timm directly, with the config's kwargs (the independent reference)."""
    import timm

    kwargs = {k: v for k, v in cfg.MODEL.STUDENT_KWARGS.items()}
    return timm.create_model(cfg.DISTILLER.STUDENT[len("timm:"):], num_classes=num_classes,
                             img_size=cfg.DATASET.IMAGE_SIZE, **kwargs).eval()


def test_timm_vit_teacher_run_exports_every_format_with_its_kwargs(tmp_path, torch_single_thread):
    """A TYPE NONE run of a timm ViT (patch 4, width 64 from MODEL.STUDENT_KWARGS; one block here, for
    speed): each format gives the logits of the same ViT built by timm itself and loaded with the
    checkpoint's weights."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package, reason="requirements.txt installs onnx, onnxscript and onnxruntime")
    cfg = build_cfg(DIGITS_VIT, ["MODEL.STUDENT_KWARGS.depth=1"])
    torch.manual_seed(0)
    vit = build_role_model(cfg, "STUDENT", 10)
    path = str(tmp_path / "student_best")
    save_checkpoint({"model": vit.state_dict(), "cfg": dump_cfg(cfg)}, path)
    results = export_checkpoint(path, str(tmp_path / "out"), batch_size=3)
    assert set(results) == {"deploy", "torchscript", "pt2", "onnx"}
    assert all(r["ok"] for r in results.values()), results

    deployed = load_checkpoint(results["deploy"]["path"])["model"]
    assert deployed["model.model.pos_embed"].shape == (1, 1 + 4 * 4, 64)  # 16 px / patch 4, embed_dim 64
    reference = _timm_model(cfg, 10)
    reference.load_state_dict({k[len("model.model."):]: v for k, v in deployed.items()})
    image = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = reference(image)
        assert torch.allclose(load_deployable(results["deploy"]["path"])(image), expected, atol=1e-5)
        assert torch.allclose(load_torchscript(results["torchscript"]["path"])(image), expected, atol=1e-5)
        assert torch.allclose(load_program(results["pt2"]["path"])(image), expected, atol=1e-5)
        assert torch.allclose(export_module.onnx_predictor(results["onnx"]["path"])(image), expected, atol=1e-4)


@pytest.mark.parametrize("fusion,checkpoint", [("logits", "best"), ("softmax", "student_best")])
def test_deit_run_deploys_the_fusion_of_its_two_heads(tmp_path, fusion, checkpoint, torch_single_thread):
    """A DEIT run's full checkpoint or its student-only file exports to the prediction the run
    evaluated: the mean of the class and distillation heads' logits, or the log of the mean of
    their softmax outputs (DEIT.FUSION), computed here from timm's own DeiT."""
    cfg = build_cfg(DIGITS_DEIT, [f"DEIT.FUSION={fusion}"])
    torch.manual_seed(0)
    distiller = build_distiller(cfg, 1, 10, teacher_weights=False).eval()
    reference = _timm_model(cfg, 10)
    reference.load_state_dict({k[len("model."):]: v for k, v in distiller.student.state_dict().items()})
    image = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        tokens = reference.forward_features(image)
        cls_logits, dist_logits = reference.head(tokens[:, 0]), reference.head_dist(tokens[:, 1])
    assert not torch.allclose(cls_logits, dist_logits, atol=1e-3)  # two heads that differ: the fusion matters
    if fusion == "logits":
        expected = (cls_logits + dist_logits) / 2
    else:
        expected = torch.log((cls_logits.softmax(1) + dist_logits.softmax(1)) / 2)

    model = distiller if checkpoint == "best" else distiller.student
    save_checkpoint({"model": model.state_dict(), "cfg": dump_cfg(cfg)}, str(tmp_path / checkpoint))
    results = export_checkpoint(str(tmp_path / checkpoint), str(tmp_path / "out"), ("deploy", "torchscript"),
                                batch_size=3)
    assert all(r["ok"] for r in results.values()), results
    keys = set(load_checkpoint(results["deploy"]["path"])["model"])
    assert keys == {f"distiller.student.{k}" for k in distiller.student.state_dict()}  # no teacher weight
    with torch.no_grad():
        assert torch.allclose(load_deployable(results["deploy"]["path"])(image), expected, atol=1e-5)
        assert torch.allclose(load_torchscript(results["torchscript"]["path"])(image), expected, atol=1e-5)


def test_torchvision_student_exports_through_its_hooked_adapter(tmp_path, torch_single_thread):
    """A torchvision model (taps by forward hooks, registered inside each forward) traces and
    deploys: the logits of torchvision's own model with the checkpoint's weights."""
    from torchvision import models

    cfg = build_cfg(DIGITS_STUDENT, ["DISTILLER.STUDENT=torchvision:mobilenet_v3_small", "DATASET.IMAGE_SIZE=32"])
    torch.manual_seed(0)
    student = build_role_model(cfg, "STUDENT", 10).eval()
    path = str(tmp_path / "student_best")
    save_checkpoint({"model": student.state_dict(), "cfg": dump_cfg(cfg)}, path)
    results = export_checkpoint(path, str(tmp_path / "out"), ("deploy", "torchscript"), batch_size=3)
    assert all(r["ok"] for r in results.values()), results
    reference = models.mobilenet_v3_small(num_classes=10).eval()
    reference.load_state_dict({k[len("model."):]: v for k, v in student.state_dict().items()})
    image = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = reference(image)
        assert torch.allclose(load_deployable(results["deploy"]["path"])(image), expected, atol=1e-5)
        assert torch.allclose(load_torchscript(results["torchscript"]["path"])(image), expected, atol=1e-5)
