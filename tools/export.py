"""Export a trained model for deployment, each export checked against the checkpoint's logits.

    python tools/export.py -c output/digits_sweep/digits,DISTILLER.TYPE:KD,EXPERIMENT.SEED:0/student_best
    python tools/export.py -c output/cifar100_baselines/sfakd,res32x4,res8x4/best -o deploy/ --formats deploy,onnx

Writes into -o (default <checkpoint dir>/export/), named after the checkpoint file:
  <name>.deploy.pth      student-only file (plus the modules the method predicts through, e.g.
                         SFAKD's SFA module, projector and the teacher's classifier; never the rest
                         of the teacher); read it with mdistiller.export.load_deployable
  <name>.torchscript.pt  torch.jit.trace of the same model (torch.jit.load); when the model does not
                         trace correctly, <name>.pt2 is written in its place
  <name>.pt2             torch.export program (torch.export.load(path).module())
  <name>.onnx            ONNX (torch.export-based exporter; input "image", output "logits", dynamic batch)
  <name>.export.json     the check: largest logit difference to the checkpoint's model on a random batch
Each model takes (B, 3, S, S) normalised images, S = the run's DATASET.IMAGE_SIZE, and returns logits.
timm: / torchvision: models (MODEL.*_KWARGS included) export like the zoo's; which formats each
family takes is in mdistiller/export.py. For methods predicting through modules beside the student
(SFAKD), pass the full checkpoint 'best' / 'latest' (DEIT, whose two heads are the student's, also
exports from 'student_best'). Exit status 1 when an export does not reproduce the logits.
A segmenter's run of tools/train_dense.py exports its student as TorchScript, pt2 and ONNX
(images of DATASET.CROP_SIZE, logits at the input size; mdistiller_dense/export.py).
"""

import argparse
import json
import os
import sys
from typing import List, Optional

import _path  # noqa: F401

from mdistiller.cli import run_tool
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.export import FORMATS, export_checkpoint, failed_formats
from mdistiller_dense.export import DENSE_FORMATS, export_dense_checkpoint, is_dense_checkpoint


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint to deployable formats and check them.")
    parser.add_argument("-c", "--ckpt", required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("-o", "--out", default=None, help="output directory (default <checkpoint dir>/export)")
    parser.add_argument("--formats", default="", help=f"comma-separated, from {','.join(FORMATS)} (default: all; "
                        f"dense runs: {','.join(DENSE_FORMATS)})")
    parser.add_argument("-bs", "--batch-size", type=int, default=4, help="images in the random check batch")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "export")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if is_dense_checkpoint(load_checkpoint(args.ckpt)):
        results = export_dense_checkpoint(args.ckpt, out, formats, args.batch_size)
    else:
        results = export_checkpoint(args.ckpt, out, formats or FORMATS, args.batch_size)
    name = os.path.basename(os.path.normpath(args.ckpt))
    with open(os.path.join(out, f"{name}.export.json"), "w") as f:
        json.dump(results, f, indent=2)
    for fmt, result in results.items():
        if result["path"] is None:
            print(f"{fmt:12s} not written ({result['error']}); {result['replaced_by']} written instead")
            continue
        verdict = "ok" if result["ok"] else "MISMATCH"
        print(f"{fmt:12s} {result['path']}  max |logit difference| {result['max_abs_diff']:.2e}  {verdict}")
    if failed_formats(results):
        print("error: an export does not reproduce the checkpoint's logits (see above).", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_tool(main)
