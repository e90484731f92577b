"""Evaluate a detector (COCO AP) or segmenter (mIoU) checkpoint on the validation set.

    python tools/eval_dense.py -c output/dense/<run>/student_best [KEY VALUE ...]
    python tools/eval_dense.py -c teacher.pth --cfg configs/shapes/cwd.yaml -m fcos_resnet34_fpn
    python tools/eval_dense.py -c torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1 --cfg configs/coco/...yaml -m fcos_resnet50_fpn

Student files and full checkpoints both work; the dataset, model and precision settings come from
the config saved in the checkpoint, else from --cfg, then from the KEY VALUE overrides. ``-m``
evaluates another architecture than the config's student (a teacher file).

A SAM model (configs/shapes/sam_*.yaml, configs/sa1b/) gets MobileSAM's comparison: box-prompt and
point-prompt mIoU, the image encoder's parameters and throughput; ``--teacher`` adds the same row for
DISTILLER.TEACHER with DISTILLER.TEACHER_WEIGHTS:

    python tools/eval_dense.py -c output/shapes/sam_mse/student_best --teacher
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
from mdistiller_dense.sam.build import sam_table
from mdistiller_dense.sam.models import is_sam_model
from mdistiller_dense.trainer import dense_evaluate


def dense_eval_cfg(ckpt: str, cfg_file: str = "", model_name: str = "", batch_size: int = 0,
                   opts: Sequence[str] = ()) -> CN:
    """The frozen config a dense checkpoint is evaluated with: the one it holds (or `cfg_file`), its
    student `model_name` if given, no method, the command line's overrides."""
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
    return cfg


def dense_eval_model(ckpt: str, cfg: CN) -> Tuple[torch.nn.Module, DataLoader, torch.device, Callable]:
    """`(model, val_loader, device, autocast)`: the checkpoint's student wrapped for
    :func:`dense_evaluate`, its validation loader, and `autocast()` at the run's precision."""
    _, val_loader, num_classes = build_dense_loaders(cfg)
    student = build_dense_model(cfg.DISTILLER.STUDENT, num_classes, cfg.MODEL)
    load_model_weights(student, ckpt, f"Model {cfg.DISTILLER.STUDENT}")
    device = resolve_device(cfg.SOLVER.DEVICE)
    model = dense_distiller_dict["NONE"](student, None, cfg, num_classes=num_classes).to(device)
    dtype = autocast_dtype(device, cfg.SOLVER)
    return model, val_loader, device, lambda: autocast_context(device, dtype)


def load_dense(ckpt: str, cfg_file: str = "", model_name: str = "", batch_size: int = 0,
               opts: Sequence[str] = ()) -> Tuple[torch.nn.Module, CN, DataLoader, torch.device, Callable]:
    """`(model, cfg, val_loader, device, autocast)` of a dense checkpoint, as the module docstring says:
    `model` the student wrapped for :func:`dense_evaluate`, `autocast()` the run's precision."""
    cfg = dense_eval_cfg(ckpt, cfg_file, model_name, batch_size, opts)
    model, val_loader, device, autocast = dense_eval_model(ckpt, cfg)
    return model, cfg, val_loader, device, autocast


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a dense-prediction checkpoint.")
    parser.add_argument("-c", "--ckpt", required=True, help="checkpoint file or torchvision:<Enum>.<NAME>")
    parser.add_argument("--cfg", default="", help="YAML config (when the checkpoint holds none)")
    parser.add_argument("-m", "--model", default="", help="architecture, default the config's student")
    parser.add_argument("-bs", "--batch-size", type=int, default=0)
    parser.add_argument("--teacher", action="store_true", help="SAM: also evaluate the config's teacher")
    args, opts = parser.parse_known_args(argv)

    cfg = dense_eval_cfg(args.ckpt, args.cfg, args.model, args.batch_size, opts)
    if is_sam_model(cfg.DISTILLER.STUDENT):
        models = [(cfg.DISTILLER.STUDENT, args.ckpt)]
        if args.teacher:
            models.append((cfg.DISTILLER.TEACHER, cfg.DISTILLER.TEACHER_WEIGHTS))
        print(sam_table(cfg, models))
        return
    model, val_loader, device, autocast = dense_eval_model(args.ckpt, cfg)
    results = dense_evaluate(model, val_loader, device, autocast)
    print("  ".join(f"{name}: {100 * value:.2f}" for name, value in results.items()))


if __name__ == "__main__":
    run_tool(main)
