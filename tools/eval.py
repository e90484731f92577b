"""Evaluate a checkpoint on a validation set.

    python tools/eval.py -m resnet8x4 -c output/.../student_best -d cifar100 [-bs 64] [KEY VALUE ...]
    python tools/eval.py -m ResNet34 -c pretrain -d imagenet

Works on student files and full checkpoints. The dataset settings (root, image size) and the
precision (SOLVER.AMP: the autocast the run validated with, so the numbers match its log) come from
the config saved in the checkpoint when it has one, then from the KEY VALUE overrides.
"""

import argparse
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_model
from mdistiller.engine.cfg import CFG, load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.engine.cli import run_tool
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device

DATASETS = ("cifar100", "imagenet", "tiny_imagenet", "digits")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a model checkpoint.")
    parser.add_argument("-m", "--model", required=True, help="model name, e.g. resnet8x4")
    parser.add_argument("-c", "--ckpt", default="pretrain",
                        help="checkpoint file; 'pretrain' = torchvision ImageNet weights")
    parser.add_argument("-d", "--dataset", default="cifar100", choices=DATASETS)
    parser.add_argument("-bs", "--batch-size", type=int, default=64)
    args, opts = parser.parse_known_args(argv)

    state = None if args.ckpt == "pretrain" else load_checkpoint(args.ckpt)
    cfg = load_cfg_text(state["cfg"]) if state is not None and "cfg" in state else CFG.clone()
    cfg.defrost()
    cfg.DATASET.TYPE = args.dataset
    cfg.DATASET.TEST.BATCH_SIZE = args.batch_size
    merge_overrides(cfg, opts)
    cfg.freeze()

    _, val_loader, _, num_classes = get_dataset(cfg)
    model = build_model(args.model, args.dataset, num_classes, pretrained=state is None)
    if state is not None:
        load_weights(model, student_state_dict(state), f"Checkpoint {args.ckpt}")
    device = resolve_device(cfg.SOLVER.DEVICE)
    model = model.to(device).eval()
    dtype = autocast_dtype(device, cfg.SOLVER)
    top1, top5, loss = evaluate(lambda image: model(image)[0], val_loader, device,
                                lambda: autocast_context(device, dtype))
    print(f"Top-1: {top1:.2f}  Top-5: {top5:.2f}  Loss: {loss:.4f}")


if __name__ == "__main__":
    run_tool(main)
