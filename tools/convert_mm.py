"""Convert an mmdetection / mmsegmentation checkpoint into a teacher file of the dense models here.

    python tools/convert_mm.py retinanet_r50_fpn_1x_coco.pth teacher.pth --model retinanet_resnet50_fpn \
        MODEL.FPN_EXTRA input
    python tools/convert_mm.py reppoints_moment_x101_dconv.pth teacher.pth --model reppoints_resnext101_64x4d_fpn \
        MODEL.TEACHER_DCN_STAGES "[3, 4, 5]"
    python tools/convert_mm.py pspnet_r101-d8_512x1024_80k_cityscapes.pth teacher.pth -m pspnet_resnet101 \
        MODEL.DEEP_STEM True MODEL.AUX_LOSS True

The model is built as the run builds its teacher (MODEL.TEACHER_DCN_STAGES, MODEL.DEEP_STEM,
MODEL.FPN_EXTRA, MODEL.AUX_LOSS from --cfg and the KEY VALUE overrides; BatchNorm frozen in
detectors), num_classes from the checkpoint's classifier (mmdetection's K classes + the
background). Writes ``{"model": state_dict}``: give it as DISTILLER.TEACHER_WEIGHTS (an mmdetection
file given there directly is converted the same way on every start). Rules and where outputs may
still differ: mdistiller_dense/convert.py, docs/dense_models.md.
"""

import argparse
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.errors import CheckpointError
from mdistiller_dense.build import build_dense_teacher
from mdistiller_dense.config import build_dense_cfg
from mdistiller_dense.convert import convert_mm_state_dict, is_mm_checkpoint, mm_state_dict, num_classes_of


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an mmdetection / mmsegmentation checkpoint.")
    parser.add_argument("source", help="mmdetection / mmsegmentation checkpoint ({'state_dict', 'meta'})")
    parser.add_argument("out", help="teacher file to write")
    parser.add_argument("-m", "--model", required=True, help="dense model name, e.g. retinanet_resnet50_fpn")
    parser.add_argument("--cfg", default=None, help="YAML config whose MODEL section builds the model")
    args, opts = parser.parse_known_args(argv)
    cfg = build_dense_cfg(args.cfg, [*opts, "DISTILLER.TEACHER", args.model])
    state = load_checkpoint(args.source)
    if not is_mm_checkpoint(state):
        raise CheckpointError(f"{args.source} is not an mmdetection / mmsegmentation checkpoint "
                              "(no 'state_dict' of backbone. / neck. / *_head. keys).")
    num_classes = num_classes_of(mm_state_dict(state))
    model = build_dense_teacher(cfg, num_classes, weights=False)
    weights = convert_mm_state_dict(state, model)
    save_checkpoint({"model": weights}, args.out)
    print(f"{args.source}: {len(mm_state_dict(state))} tensors -> {args.model} (num_classes {num_classes}) -> {args.out}")


if __name__ == "__main__":
    run_tool(main)
