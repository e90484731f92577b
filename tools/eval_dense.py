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
from typing import List, Optional

import _path  # noqa: F401

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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a dense-prediction checkpoint.")
    parser.add_argument("-c", "--ckpt", required=True, help="checkpoint file or torchvision:<Enum>.<NAME>")
    parser.add_argument("--cfg", default="", help="YAML config (when the checkpoint holds none)")
    parser.add_argument("-m", "--model", default="", help="architecture, default the config's student")
    parser.add_argument("-bs", "--batch-size", type=int, default=0)
    parser.add_argument("--teacher", action="store_true", help="SAM: also evaluate the config's teacher")
    args, opts = parser.parse_known_args(argv)

    state = None if args.ckpt.startswith(TORCHVISION) else load_checkpoint(args.ckpt)
    if state is not None and "cfg" in state and not args.cfg:
        cfg = load_dense_cfg_text(state["cfg"])
    else:
        cfg = build_dense_cfg(args.cfg)
    cfg.defrost()
    cfg.DISTILLER.TYPE = "NONE"
    if args.model:
        cfg.DISTILLER.STUDENT = args.model
    if args.batch_size:
        cfg.DATASET.TEST.BATCH_SIZE = args.batch_size
    merge_overrides(cfg, opts)
    cfg.freeze()

    if is_sam_model(cfg.DISTILLER.STUDENT):
        models = [(cfg.DISTILLER.STUDENT, args.ckpt)]
        if args.teacher:
            models.append((cfg.DISTILLER.TEACHER, cfg.DISTILLER.TEACHER_WEIGHTS))
        print(sam_table(cfg, models))
        return
    _, val_loader, num_classes = build_dense_loaders(cfg)
    student = build_dense_model(cfg.DISTILLER.STUDENT, num_classes, cfg.MODEL)
    load_model_weights(student, args.ckpt, f"Model {cfg.DISTILLER.STUDENT}")
    device = resolve_device(cfg.SOLVER.DEVICE)
    model = dense_distiller_dict["NONE"](student, None, cfg, num_classes=num_classes).to(device)
    dtype = autocast_dtype(device, cfg.SOLVER)
    results = dense_evaluate(model, val_loader, device, lambda: autocast_context(device, dtype))
    print("  ".join(f"{name}: {100 * value:.2f}" for name, value in results.items()))


if __name__ == "__main__":
    run_tool(main)
