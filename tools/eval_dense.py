"""Evaluate a detector (COCO AP) or segmenter (mIoU) checkpoint on the validation set.

    python tools/eval_dense.py -c output/dense/<run>/student_best [KEY VALUE ...]
    python tools/eval_dense.py -c teacher.pth --cfg configs/shapes/cwd.yaml -m fcos_resnet34_fpn
    python tools/eval_dense.py -c torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1 --cfg configs/coco/...yaml -m fcos_resnet50_fpn

Student files and full checkpoints both work; the dataset, model and precision settings come from
the config saved in the checkpoint, else from --cfg, then from the KEY VALUE overrides. ``-m``
evaluates another architecture than the config's student (a teacher file).
"""

import argparse
from typing import Callable, List, Optional, Sequence, Tuple

import _path  # noqa: F401
import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.cli import run_tool
from mdistiller.engine.cfg import merge_overrides
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device
from mdistiller_dense.config import build_dense_cfg, load_dense_cfg_text
from mdistiller_dense.data import build_dense_loaders
from mdistiller_dense.distillers import dense_distiller_dict
from mdistiller_dense.models import TORCHVISION, build_dense_model, load_model_weights
from mdistiller_dense.trainer import dense_evaluate


def load_dense(ckpt: str, cfg_file: str = "", model_name: str = "", batch_size: int = 0,
               opts: Sequence[str] = ()) -> Tuple[torch.nn.Module, CN, DataLoader, torch.device, Callable]:
    """`(model, cfg, val_loader, device, autocast)` of a dense checkpoint, as the module docstring says:
    `model` the student wrapped for :func:`dense_evaluate`, `autocast()` the run's precision."""
    state = None if ckpt.startswith(TORCHVISION) else load_checkpoint(ckpt)
    if state is not None and "cfg" in state and not cfg_file:
        cfg = load_dense_cfg_text(state["cfg"])
    else:
        cfg = build_dense_cfg(cfg_file)
    cfg.defrost()
    cfg.DISTILLER.TYPE = "NONE"
    if model_name:
        cfg.DISTILLER.STUDENT = model_name
    if batch_size:
        cfg.DATASET.TEST.BATCH_SIZE = batch_size
    merge_overrides(cfg, list(opts))
    cfg.freeze()

    _, val_loader, num_classes = build_dense_loaders(cfg)
    student = build_dense_model(cfg.DISTILLER.STUDENT, num_classes, cfg.MODEL)
    load_model_weights(student, ckpt, f"Model {cfg.DISTILLER.STUDENT}")
    device = resolve_device(cfg.SOLVER.DEVICE)
    model = dense_distiller_dict["NONE"](student, None, cfg, num_classes=num_classes).to(device)
    dtype = autocast_dtype(device, cfg.SOLVER)
    return model, cfg, val_loader, device, lambda: autocast_context(device, dtype)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a dense-prediction checkpoint.")
    parser.add_argument("-c", "--ckpt", required=True, help="checkpoint file or torchvision:<Enum>.<NAME>")
    parser.add_argument("--cfg", default="", help="YAML config (when the checkpoint holds none)")
    parser.add_argument("-m", "--model", default="", help="architecture, default the config's student")
    parser.add_argument("-bs", "--batch-size", type=int, default=0)
    args, opts = parser.parse_known_args(argv)

    model, _, val_loader, device, autocast = load_dense(args.ckpt, args.cfg, args.model, args.batch_size, opts)
    results = dense_evaluate(model, val_loader, device, autocast)
    print("  ".join(f"{name}: {100 * value:.2f}" for name, value in results.items()))


if __name__ == "__main__":
    run_tool(main)
