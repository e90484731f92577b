"""Exports of a segmenter's checkpoint (tools/export.py on a dense run): TorchScript, torch.export
and ONNX of the student, each checked against the checkpoint's model as classification's are
(:func:`mdistiller.export.export_model`).

The exported model takes normalised images ``(B, 3, S, S)``, S = DATASET.CROP_SIZE (the shapes
image size when there is no crop), the batch axis dynamic, and returns the logits ``(B, K, S, S)``
(``forward_test``: the decode head's output upsampled to the input). The student file
(``student_best``) is itself the deployable weights file, so there is no ``deploy`` format; detectors
(lists of boxes with data-dependent counts) are not exported.
"""

from typing import Dict, Optional, Sequence

import yaml
from torch import Tensor, nn

from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.export import export_model
from mdistiller_dense.config import load_dense_cfg_text
from mdistiller_dense.data import segmentation_classes
from mdistiller_dense.models import build_dense_model, task_of

__all__ = ["DENSE_FORMATS", "SegmenterLogits", "export_dense_checkpoint", "is_dense_checkpoint"]

DENSE_FORMATS = ("torchscript", "pt2", "onnx")


class SegmenterLogits(nn.Module):
    """A torchvision-style segmenter's ``"out"`` logits alone (one tensor, as the exporters want)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)["out"]


def is_dense_checkpoint(state: dict) -> bool:
    """Whether a checkpoint's saved config is a dense run's (SOLVER.TRAINER dense)."""
    saved = yaml.safe_load(state.get("cfg") or "") or {}
    return isinstance(saved, dict) and saved.get("SOLVER", {}).get("TRAINER") == "dense"


def export_dense_checkpoint(path: str, out_dir: str, formats: Optional[Sequence[str]] = None, batch_size: int = 4,
                            seed: int = 0) -> Dict[str, Dict[str, object]]:
    """Export the student of the dense checkpoint at `path` (student file or full checkpoint) in each of
    `formats` (default DENSE_FORMATS) into `out_dir`; the results of :func:`mdistiller.export.export_model`."""
    formats = list(formats or DENSE_FORMATS)
    unknown = [f for f in formats if f not in DENSE_FORMATS]
    if unknown:
        raise ConfigError(f"Format {', '.join(unknown)} is not exported for a dense model (its student file is the "
                          f"deployable weights); choose from {', '.join(DENSE_FORMATS)}.")
    state = load_checkpoint(path)
    if "cfg" not in state:
        raise CheckpointError(f"{path} has no saved config (not written by tools/train_dense.py?); export needs it.")
    cfg = load_dense_cfg_text(state["cfg"])
    name = cfg.DISTILLER.STUDENT
    if task_of(name) == "detection":
        raise ConfigError(f"{name} is a detector: tools/export.py exports segmenters; deploy a detector from its "
                          "student file with mdistiller_dense.models.build_dense_model.")
    student = build_dense_model(name, segmentation_classes(cfg), cfg.MODEL)
    load_weights(student, student_state_dict(state), f"Checkpoint {path}")
    model = SegmenterLogits(student).eval()
    size = cfg.DATASET.CROP_SIZE or cfg.DATASET.SHAPES.IMAGE_SIZE
    return export_model(model, model, size, out_dir, path, formats, batch_size, seed)
