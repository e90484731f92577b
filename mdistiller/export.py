"""Deployable models from training checkpoints: a student-only file, TorchScript, torch.export and ONNX.

The deployed model predicts exactly as the run evaluated (``Distiller.forward_test``): for most
methods that is the student alone; a method that predicts through modules beside the student
(SFAKD: its SFA module, projector and the teacher's classifier) keeps those modules and, of the
teacher, only the submodules its ``forward_test`` calls (found by a probe forward with hooks). The
rest of the teacher is left out. Every deployed form returns logits only, for a batch of images
``(B, 3, S, S)`` with ``S = DATASET.IMAGE_SIZE``.

A method whose prediction path holds nothing beside the student (DEIT: the mean or the softmax
fusion of its two heads) also exports from the student-only file (``student_best``,
``student_ema_best``); one that predicts through its own modules needs the full checkpoint.

Formats:

- ``deploy.pth``: ``{"format", "kind", "model": state_dict, "cfg", "num_classes", "image_size"}``,
  read back by :func:`load_deployable` (weights-only unpickling, like every checkpoint here), which
  rebuilds the model from the saved config: a ``timm:`` / ``torchvision:`` model with its
  ``MODEL.*_KWARGS`` and ``MODEL.*_FEATURES``.
- TorchScript (``torch.jit.trace``; deprecated by PyTorch in favour of torch.export but still the
  format C++ / mobile runtimes load). When tracing raises or the traced model does not reproduce
  the logits (on a batch of another size than the tracing example), its file is removed and the
  torch.export file is written in its place (the result says so).
- torch.export (``.pt2``, ``torch.export.save`` of the program with a dynamic batch axis;
  ``torch.export.load(path).module()`` runs it).
- ONNX through ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter; needs the
  ``onnx`` and ``onnxscript`` packages; it translates the FFT of SFAKD, which the legacy TorchScript
  exporter cannot), with a dynamic batch axis, checked with ``onnxruntime``.

Which format a timm / torchvision model gets (measured with torch 2.14.1, timm 1.0.31, torchvision
0.29.1 on the tiny models of ``tests/tiny_models.py`` at 32 px, and on torchvision's resnet18,
convnext_tiny, swin_t and vit_b_16 at 32 px; logits of a 5-image batch against the eager model):
all of them — ViT, distilled DeiT (both heads), Swin, ConvNeXt, MLP-Mixer, timm's ResNet — trace to
TorchScript exactly (difference 0, the batch size free: the traced graph keeps the batch axis
symbolic and nothing else varies at a fixed image size), and torch.export and ONNX (differences
below 2e-6) export too. ``torch.jit.script`` is not used: the adapter returns a dict of lists and
tuples of tensors and is not scriptable (the bare timm models are), and tracing the logits path
gives the same graph. timm's attention calls ``F.scaled_dot_product_attention`` (its
``fused_attn``), which all three formats carry as one operator. The fallback to torch.export is for
models beyond these (a prediction path with Python control flow on the batch).
"""

import copy
import os
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.distillers import Distiller
from mdistiller.distillers.classifier import find_classifier
from mdistiller.engine.build import build_distiller, build_role_model, predicts_through_distiller
from mdistiller.engine.cfg import dump_cfg, load_cfg_text
from mdistiller.engine.checkpoint import (load_checkpoint, load_weights, save_checkpoint, student_state_dict,
                                          unwrapped)
from mdistiller.errors import CheckpointError, ConfigError

DEPLOY_FORMAT = "mdistiller.deploy/1"
# The teacher is built without weights for methods predicting through the distiller; its data
# size matters to no such method (CRD's memory banks, the one user of num_data, predict through the student).
NUM_DATA_UNUSED = 1


class StudentLogits(nn.Module):
    """A model of this toolkit (``logits, feats = model(x)``) that returns the logits alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)[0]


class DistillerLogits(nn.Module):
    """A distiller's prediction path, ``forward_test``, as a module (its teacher pruned)."""

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        self.distiller = distiller

    def forward(self, image: Tensor) -> Tensor:
        return self.distiller.forward_test(image)


@torch.no_grad()
def teacher_modules_used(distiller: Distiller, image_size: int) -> List[str]:
    """Names of the outermost teacher submodules that ``forward_test`` calls ('' = the whole teacher)."""
    called: List[str] = []
    handles = [m.register_forward_pre_hook(lambda module, args, name=name: called.append(name))
               for name, m in distiller.teacher.named_modules()]
    was_training = distiller.training
    try:
        distiller.eval()
        distiller.forward_test(torch.zeros(2, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
        distiller.train(was_training)
    if "" in called:
        return [""]
    return sorted({n for n in called if not any(n.startswith(o + ".") for o in called if o != n)})


def keep_submodules(model: nn.Module, names: List[str]) -> nn.Module:
    """A container holding only `names` of `model`, at the same paths (so state-dict keys match)."""
    if names == [""]:
        return model
    skeleton = nn.Module()
    for name in names:
        parent = skeleton
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, model.get_submodule(name))
    return skeleton


def prune_teacher(distiller: Distiller, image_size: int) -> Distiller:
    """A copy of `distiller` whose teacher keeps only what ``forward_test`` calls."""
    pruned = copy.deepcopy(distiller)
    if pruned.teacher is not None:
        pruned.inference_teacher = None
        pruned.teacher = keep_submodules(pruned.teacher, teacher_modules_used(pruned, image_size))
    return pruned.eval()


def checkpoint_num_classes(cfg: CN, weights: Dict[str, Tensor]) -> int:
    """Classes of the checkpoint's student, read off its classifier's weight."""
    name, _ = find_classifier(build_role_model(cfg, "STUDENT", 10))
    key = f"{name}.weight"
    if key not in weights:
        raise CheckpointError(f"Checkpoint's student has no classifier weight '{key}': not a {cfg.DISTILLER.STUDENT}?")
    return int(weights[key].shape[0])


def _full_weights(state: dict) -> Dict[str, Tensor]:
    return unwrapped(state.get("model") or {})


def needs_only_student(deployable: "DistillerLogits") -> bool:
    """True when the pruned prediction path holds no weight beside the student's (DEIT)."""
    return all(k.startswith("distiller.student.") for k in deployable.state_dict())


def build_deployable(cfg: CN, num_classes: int, through_distiller: bool) -> nn.Module:
    """An uninitialised deployable model of `cfg`'s student (and prediction modules)."""
    if not through_distiller:
        return StudentLogits(build_role_model(cfg, "STUDENT", num_classes)).eval()
    distiller = build_distiller(cfg, NUM_DATA_UNUSED, num_classes, teacher_weights=False)
    return DistillerLogits(prune_teacher(distiller, cfg.DATASET.IMAGE_SIZE)).eval()


def from_checkpoint(path: str) -> Tuple[nn.Module, Callable[[Tensor], Tensor], CN, int]:
    """(deployable model, the checkpoint's own predictor, config, classes) of a training checkpoint.

    The predictor is the checkpoint's full model (for methods predicting through the distiller:
    the whole distiller, teacher included), the reference the exports are checked against.
    """
    state = load_checkpoint(path)
    if "cfg" not in state:
        raise CheckpointError(f"{path} has no saved config (not written by tools/train.py?); export needs it.")
    cfg = load_cfg_text(state["cfg"])
    through = predicts_through_distiller(cfg.DISTILLER.TYPE)
    if not through:
        weights = student_state_dict(state)
        num_classes = checkpoint_num_classes(cfg, weights)
        model = StudentLogits(build_role_model(cfg, "STUDENT", num_classes))
        load_weights(model.model, weights, f"Checkpoint {path}")
        model.eval()
        return model, model, cfg, num_classes
    weights = _full_weights(state)
    student_only = not any(k.startswith("student.") for k in weights)
    student_weights = student_state_dict(state)
    num_classes = checkpoint_num_classes(cfg, student_weights)
    distiller = build_distiller(cfg, NUM_DATA_UNUSED, num_classes, teacher_weights=False)
    if student_only:
        load_weights(distiller.student, student_weights, f"Checkpoint {path}")
    else:
        load_weights(distiller, weights, f"Checkpoint {path}")
    distiller.eval()
    deployable = DistillerLogits(prune_teacher(distiller, cfg.DATASET.IMAGE_SIZE))
    if student_only and not needs_only_student(deployable):
        raise CheckpointError(f"{path} holds only the student, but {cfg.DISTILLER.TYPE} predicts through modules "
                              "beside it: export the run's full checkpoint 'best' or 'latest'.")
    return deployable, DistillerLogits(distiller).eval(), cfg, num_classes


def save_deployable(model: nn.Module, cfg: CN, num_classes: int, path: str) -> None:
    save_checkpoint({
        "format": DEPLOY_FORMAT,
        "kind": "distiller" if isinstance(model, DistillerLogits) else "student",
        "model": model.state_dict(),
        "cfg": dump_cfg(cfg),
        "num_classes": num_classes,
        "image_size": cfg.DATASET.IMAGE_SIZE,
    }, path)


def load_deployable(path: str) -> nn.Module:
    """The model of a file written by :func:`save_deployable`, in eval mode, on the CPU."""
    state = load_checkpoint(path)
    if state.get("format") != DEPLOY_FORMAT:
        raise CheckpointError(f"{path} is not a deployable file of tools/export.py (format {state.get('format')!r}).")
    cfg = load_cfg_text(state["cfg"])
    model = build_deployable(cfg, int(state["num_classes"]), state["kind"] == "distiller")
    load_weights(model, state["model"], f"Deployable file {path}")
    return model.eval()


def export_torchscript(model: nn.Module, example: Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer warnings
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(path)


def load_torchscript(path: str) -> Callable[[Tensor], Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path, map_location="cpu")


def export_program(model: nn.Module, example: Tensor, path: str) -> None:
    """``torch.export`` of `model` with a dynamic batch axis, saved with ``torch.export.save``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, path)


def load_program(path: str) -> Callable[[Tensor], Tensor]:
    return torch.export.load(path).module()


def _batch_dim() -> "torch.export.Dim":
    return torch.export.Dim("batch", min=1, max=4096)


def export_onnx(model: nn.Module, example: Tensor, path: str) -> None:
    """ONNX with a dynamic batch axis, input ``image``, output ``logits``."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({err}): "
                          "pip install onnx onnxscript onnxruntime, or leave onnx out of --formats.") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=({0: _batch_dim()},), dynamo=True, verbose=False)
    program.save(path)


def onnx_predictor(path: str) -> Callable[[Tensor], Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("Checking the ONNX file needs onnxruntime: pip install onnxruntime.") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda image: torch.from_numpy(session.run(None, {name: image.numpy()})[0])


def max_difference(predict: Callable[[Tensor], Tensor], reference: Tensor, batch: Tensor) -> float:
    with torch.no_grad():
        out = predict(batch)
    if out.shape != reference.shape:
        raise AssertionError(f"exported model gives shape {tuple(out.shape)}, expected {tuple(reference.shape)}")
    return float((out.float() - reference.float()).abs().max())


def logits_match(difference: float, reference: Tensor, rtol: float = 1e-4, atol: float = 1e-4) -> bool:
    """Close in float32: within `atol` plus `rtol` of the largest reference logit."""
    return difference <= atol + rtol * float(reference.abs().max())


FORMATS = ("deploy", "torchscript", "pt2", "onnx")
SUFFIX = {"deploy": ".deploy.pth", "torchscript": ".torchscript.pt", "pt2": ".pt2", "onnx": ".onnx"}
PROGRAMS = {  # format: (write(model, example, path), read(path) -> predictor)
    "pt2": (export_program, load_program),
    "onnx": (export_onnx, onnx_predictor),
}


def export_checkpoint(path: str, out_dir: str, formats=FORMATS, batch_size: int = 4,
                      seed: int = 0) -> Dict[str, Dict[str, object]]:
    """Write each format of `formats` for the checkpoint at `path` into `out_dir` and check it.

    Each export is read back and run on one random batch (``batch_size`` images, a different
    batch size from the tracing example, so the batch axis is checked too); its logits are compared
    with the checkpoint's own model. Returns ``{format: {"path", "max_abs_diff", "ok"}}``. A
    TorchScript that cannot be traced or does not match is removed and reported with ``"path": None``,
    ``"ok": False``, its ``"error"`` and ``"replaced_by": "pt2"``; the ``pt2`` entry is then added.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"Unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}.")
    model, reference_model, cfg, num_classes = from_checkpoint(path)

    def deploy(target: str) -> Callable[[Tensor], Tensor]:
        save_deployable(model, cfg, num_classes, target)
        return load_deployable(target)

    return export_model(model, reference_model, cfg.DATASET.IMAGE_SIZE, out_dir, path, formats, batch_size, seed,
                        deploy)


def export_model(model: nn.Module, reference_model: Callable[[Tensor], Tensor], size: int, out_dir: str, path: str,
                 formats=FORMATS, batch_size: int = 4, seed: int = 0,
                 deploy: Optional[Callable[[str], Callable[[Tensor], Tensor]]] = None) -> Dict[str, Dict[str, object]]:
    """Export `model` (images (B, 3, size, size) -> one tensor) in each format into `out_dir`, the files
    named after the checkpoint `path`, each checked against `reference_model` as
    :func:`export_checkpoint` says; `deploy(target)` writes the ``deploy`` format and reads it back."""
    if "deploy" in formats and deploy is None:
        raise ConfigError(f"No deploy format for {path}: choose from {', '.join(f for f in FORMATS if f != 'deploy')}.")
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(batch_size, 3, size, size, generator=generator)
    # Two images (three when the check batch has two): torch.export takes a batch of 1 for a constant.
    example = torch.randn(3 if batch_size == 2 else 2, 3, size, size, generator=generator)
    with torch.no_grad():
        reference = reference_model(batch)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, os.path.basename(os.path.normpath(path)))

    def checked(target: str, predict: Callable[[Tensor], Tensor]) -> Dict[str, object]:
        difference = max_difference(predict, reference, batch)
        return {"path": target, "max_abs_diff": difference, "ok": logits_match(difference, reference)}

    def program(fmt: str) -> Dict[str, object]:
        write, read = PROGRAMS[fmt]
        write(model, example, stem + SUFFIX[fmt])
        return checked(stem + SUFFIX[fmt], read(stem + SUFFIX[fmt]))

    results: Dict[str, Dict[str, object]] = {}
    for fmt in formats:
        target = stem + SUFFIX[fmt]
        if fmt == "deploy":
            results[fmt] = checked(target, deploy(target))
        elif fmt == "torchscript":
            results[fmt] = traced_or_error(model, example, target, checked)
            if not results[fmt]["ok"]:
                if os.path.exists(target):
                    os.remove(target)
                results[fmt].update(path=None, replaced_by="pt2")
                if "pt2" not in formats:
                    results["pt2"] = program("pt2")
        else:
            results[fmt] = program(fmt)
    return results


def traced_or_error(model: nn.Module, example: Tensor, target: str,
                    checked: Callable[[str, Callable[[Tensor], Tensor]], Dict[str, object]]) -> Dict[str, object]:
    """The checked TorchScript trace of `model`, or ``{"ok": False, "error"}`` when tracing raises."""
    try:
        export_torchscript(model, example, target)
        result = checked(target, load_torchscript(target))
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:  # tracer errors are of these types
        return {"path": target, "max_abs_diff": None, "ok": False, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
    if not result["ok"]:
        result["error"] = "the traced model does not reproduce the logits"
    return result


def failed_formats(results: Dict[str, Dict[str, object]]) -> List[str]:
    """Formats whose export does not reproduce the logits and was not replaced by a good one."""
    def good(fmt: str) -> bool:
        result = results.get(fmt, {})
        return bool(result.get("ok")) or ("replaced_by" in result and good(result["replaced_by"]))
    return [fmt for fmt in results if not good(fmt)]
