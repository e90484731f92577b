"""Evaluate a checkpoint on a validation set.

    python tools/eval.py -m resnet8x4 -c output/.../student_best -d cifar100 [-bs 64] [KEY VALUE ...]
    python tools/eval.py -m ResNet34 -c pretrain -d imagenet
    python tools/eval.py -m timm:deit_tiny_patch16_224 -c pretrain -d imagenet   # timm's / torchvision's weights
    python tools/eval.py -m timm:vit_tiny_patch16_224 -c output/.../student_best -d cifar100
    python tools/eval.py -m resnet8x4 -c output/.../best -d cifar100      # an SFAKD run

Works on student files and full checkpoints. The dataset settings (root, image size) and the
precision (SOLVER.AMP: the autocast the run validated with, so the numbers match its log) come from
the config saved in the checkpoint when it has one, then from the KEY VALUE overrides.

Methods that predict through modules beside the student (their distiller overrides
`forward_test`; SFAKD: its SFA module, projector and the teacher's classifier) are evaluated the way
they trained, through `forward_test`: pass the run's full checkpoint `best` or `latest`, not
`student_best`. It holds the teacher's weights too, so no teacher file is needed.
"""

import argparse
from typing import Callable, List, Optional

import _path  # noqa: F401
import torch
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.dataset.base import image_size
from mdistiller.engine.build import (build_distiller, build_model, build_role_model, load_external_weights,
                                     predicts_through_distiller)
from mdistiller.engine.cfg import CFG, load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict, unwrapped
from mdistiller.cli import run_tool
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.models.external import is_external_name, pretrained_spec

DATASETS = ("cifar100", "imagenet", "tiny_imagenet", "digits")


def distiller_predictor(args: argparse.Namespace, cfg: CN, state: dict, num_data: int, num_classes: int,
                        device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The distiller of a full checkpoint (teacher built uninitialised, then the whole state loaded)."""
    method = cfg.DISTILLER.TYPE
    weights = unwrapped(state.get("model") or {})
    if not any(k.startswith("student.") for k in weights):
        raise CheckpointError(
            f"{args.ckpt} holds only the student, but {method} predicts through modules beside it: "
            "pass the run's full checkpoint 'best' or 'latest' instead."
        )
    if args.model != cfg.DISTILLER.STUDENT:
        raise ConfigError(f"-m {args.model} does not match the checkpoint's student {cfg.DISTILLER.STUDENT}.")
    distiller = build_distiller(cfg, num_data, num_classes, teacher_weights=False)
    load_weights(distiller, weights, f"Checkpoint {args.ckpt}")
    distiller = distiller.to(device).eval()
    return lambda image: distiller(image=image)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a model checkpoint.")
    parser.add_argument("-m", "--model", required=True, help="model name, e.g. resnet8x4")
    parser.add_argument("-c", "--ckpt", default="pretrain",
                        help="checkpoint file; 'pretrain' = ImageNet weights (torchvision's, or timm's for timm: "
                             "names); for methods "
                             "predicting beyond the student (SFAKD) the run's full 'best' / 'latest'")
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

    _, val_loader, num_data, num_classes = get_dataset(cfg)
    device = resolve_device(cfg.SOLVER.DEVICE)
    if state is not None and "cfg" in state and predicts_through_distiller(cfg.DISTILLER.TYPE):
        predict = distiller_predictor(args, cfg, state, num_data, num_classes, device)
    else:
        if state is not None and "cfg" in state and args.model == cfg.DISTILLER.STUDENT:
            model = build_role_model(cfg, "STUDENT", num_classes)  # its constructor arguments and taps
        else:
            model = build_model(args.model, args.dataset, num_classes, pretrained=state is None,
                                size=image_size(cfg))
        if state is not None:
            load_weights(model, student_state_dict(state), f"Checkpoint {args.ckpt}")
        elif is_external_name(args.model):  # -c pretrain: the library's own pretrained weights
            load_external_weights(model, pretrained_spec(args.model), "Pretrained", False, num_classes)
        model = model.to(device).eval()
        predict = lambda image: model(image)[0]  # noqa: E731
    dtype = autocast_dtype(device, cfg.SOLVER)
    top1, top5, loss = evaluate(predict, val_loader, device, lambda: autocast_context(device, dtype))
    print(f"Top-1: {top1:.2f}  Top-5: {top5:.2f}  Loss: {loss:.4f}")


if __name__ == "__main__":
    run_tool(main)
