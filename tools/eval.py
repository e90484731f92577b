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
they trained, through `forward_test`, from the run's full checkpoint: `best` or `latest` directly,
or a student file (`student_best`, `student_latest`, `student_N`), for which the full checkpoint of
the same epoch beside it (`best`, `latest`, `epoch_N`) is read. It holds the teacher's weights too,
so no teacher file is needed. A checkpoint without a saved config (MDistiller's) takes the run's
`cfg.yaml` beside it. `-c .../student_best.pth` finds `student_best` (the SFAKD README's form).
"""

import argparse
import os
import re
from typing import Callable, List, Optional, Tuple

import _path  # noqa: F401
import torch
from yacs.config import CfgNode as CN

from mdistiller.dataset import get_dataset
from mdistiller.dataset.base import image_size
from mdistiller.engine.build import (build_distiller, build_model, build_role_model, load_external_weights,
                                     predicts_through_distiller)
from mdistiller.engine.cfg import CFG, load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import (checkpoint_path, load_checkpoint, load_weights, student_state_dict,
                                          unwrapped)
from mdistiller.cli import run_tool
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.utils import autocast_context, autocast_dtype, resolve_device
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.models.external import is_external_name, pretrained_spec

DATASETS = ("cifar100", "imagenet", "tiny_imagenet", "digits")


# A student file and the full checkpoint the trainer writes with it (mdistiller/engine/trainer.py).
FULL_OF_STUDENT = ((re.compile(r"student_best"), "best"), (re.compile(r"student_latest"), "latest"),
                   (re.compile(r"student_(\d+)"), r"epoch_\1"))


def full_checkpoint(path: str, state: dict, method: str) -> Tuple[str, dict]:
    """`path` and `state` when they are a full checkpoint, else the full checkpoint of the same
    epoch beside the student file `path`; CheckpointError when there is none."""
    if any(k.startswith("student.") for k in unwrapped(state.get("model") or {})):
        return path, state
    name = os.path.basename(path)
    for pattern, full_name in FULL_OF_STUDENT:
        if pattern.fullmatch(name):
            full = os.path.join(os.path.dirname(path), pattern.sub(full_name, name))
            if os.path.isfile(full):
                full_state = load_checkpoint(full)
                if full_state.get("epoch") == state.get("epoch"):
                    print(f"{method} predicts through modules beside the student: evaluating {full} "
                          f"(epoch {full_state.get('epoch')}, the epoch of {name}).")
                    return full, full_state
    raise CheckpointError(
        f"{path} holds only the student, but {method} predicts through modules beside it: "
        "pass the run's full checkpoint 'best' or 'latest' instead."
    )


def distiller_predictor(args: argparse.Namespace, cfg: CN, state: dict, num_data: int, num_classes: int,
                        device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The distiller of a full checkpoint (teacher built uninitialised, then the whole state loaded)."""
    method = cfg.DISTILLER.TYPE
    path, state = full_checkpoint(checkpoint_path(args.ckpt), state, method)
    if args.model != cfg.DISTILLER.STUDENT:
        raise ConfigError(f"-m {args.model} does not match the checkpoint's student {cfg.DISTILLER.STUDENT}.")
    distiller = build_distiller(cfg, num_data, num_classes, teacher_weights=False)
    load_weights(distiller, unwrapped(state["model"]), f"Checkpoint {path}")
    distiller = distiller.to(device).eval()
    return lambda image: distiller(image=image)


def saved_config_text(ckpt: str, state: Optional[dict]) -> Optional[str]:
    """The config a checkpoint was trained with: its own, else the run's `cfg.yaml` beside it."""
    if state is None:
        return None
    if "cfg" in state:
        return state["cfg"]
    beside = os.path.join(os.path.dirname(checkpoint_path(ckpt)), "cfg.yaml")
    if os.path.isfile(beside):
        with open(beside) as f:
            return f.read()
    return None


def load_classifier(model_name: str, ckpt: str, dataset: str, batch_size: int, opts: List[str]
                    ) -> Tuple[Callable[[torch.Tensor], torch.Tensor], CN, object, torch.device, Callable]:
    """`(predict, cfg, val_loader, device, autocast)` of a checkpoint, as the module docstring says:
    `predict(image) -> logits`, `autocast()` the precision the run validated with."""
    state = None if ckpt == "pretrain" else load_checkpoint(ckpt)
    text = saved_config_text(ckpt, state)
    cfg = load_cfg_text(text) if text is not None else CFG.clone()
    cfg.defrost()
    cfg.DATASET.TYPE = dataset
    cfg.DATASET.TEST.BATCH_SIZE = batch_size
    merge_overrides(cfg, opts)
    cfg.freeze()

    _, val_loader, num_data, num_classes = get_dataset(cfg)
    device = resolve_device(cfg.SOLVER.DEVICE)
    if text is not None and predicts_through_distiller(cfg.DISTILLER.TYPE):
        args = argparse.Namespace(model=model_name, ckpt=ckpt)
        predict = distiller_predictor(args, cfg, state, num_data, num_classes, device)
    else:
        if text is not None and model_name == cfg.DISTILLER.STUDENT:
            model = build_role_model(cfg, "STUDENT", num_classes)  # its constructor arguments and taps
        else:
            model = build_model(model_name, dataset, num_classes, pretrained=state is None, size=image_size(cfg))
        if state is not None:
            load_weights(model, student_state_dict(state), f"Checkpoint {ckpt}")
        elif is_external_name(model_name):  # -c pretrain: the library's own pretrained weights
            load_external_weights(model, pretrained_spec(model_name), "Pretrained", False, num_classes)
        model = model.to(device).eval()
        predict = lambda image: model(image)[0]  # noqa: E731
    dtype = autocast_dtype(device, cfg.SOLVER)
    return predict, cfg, val_loader, device, lambda: autocast_context(device, dtype)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a model checkpoint.")
    parser.add_argument("-m", "--model", required=True, help="model name, e.g. resnet8x4")
    parser.add_argument("-c", "--ckpt", default="pretrain",
                        help="checkpoint file; 'pretrain' = ImageNet weights (torchvision's, or timm's for timm: "
                             "names); for methods "
                             "predicting beyond the student (SFAKD) the run's full 'best' / 'latest', or its "
                             "'student_best', read with 'best' beside it")
    parser.add_argument("-d", "--dataset", default="cifar100", choices=DATASETS)
    parser.add_argument("-bs", "--batch-size", type=int, default=64)
    args, opts = parser.parse_known_args(argv)

    predict, _, val_loader, device, autocast = load_classifier(args.model, args.ckpt, args.dataset,
                                                               args.batch_size, opts)
    top1, top5, loss = evaluate(predict, val_loader, device, autocast)
    print(f"Top-1: {top1:.2f}  Top-5: {top5:.2f}  Loss: {loss:.4f}")


if __name__ == "__main__":
    run_tool(main)
