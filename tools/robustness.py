"""Corruption robustness of checkpoints: their test set under the 15 corruptions of ImageNet-C at
severities 1-5, with the clean score, mPC, rPC and (against --baseline) mCE.

    python tools/robustness.py -m resnet8x4 -c output/.../student_best -d cifar100
    python tools/robustness.py -d digits -m wrn_16_2 -c output/quickstart/teacher/student_best \\
        -m resnet8 -c output/quickstart/NONE_seed0/student_best -c output/quickstart/KD_seed0/student_best \\
        --baseline output/quickstart/NONE_seed0/student_best --json rob.json --md rob.md --plot rob.png
    python tools/robustness.py --cfg configs/shapes/cwd.yaml -c output/dense/<run>/student_best   # AP / mIoU

Several `-c` are evaluated side by side on the same corrupted images; a single `-m` serves them
all, else give one `-m` per `-c`. Checkpoints load as in tools/eval.py (classification) or
tools/eval_dense.py (`--cfg`: a detection or segmentation run, scored by COCO AP or mIoU on its
validation set corrupted as COCO-C / Cityscapes-C are, mdistiller_dense/corrupted.py).

Images: corrupted on the fly with the `imagecorruptions` functions (its maintained fork
imagecorruptions-imaug; mdistiller/experiments/corruptions.py says why, how each image is seeded
and how images under 32 px, the digits at 16, are handled), or read from CIFAR-100-C / ImageNet-C /
Tiny-ImageNet-C under DATASET.ROOT when they are there (`--source auto`, the default; `files`
requires them, `fly` ignores them). Scores: mdistiller/experiments/robustness.py. `--limit N`
scores the first N test images only (a quick look; the published sets then give their first N too).

Writes the Markdown tables to stdout (and --md), the scores per corruption and severity to --json,
and the accuracy against severity per corruption family to --plot.
"""

import argparse
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import _path  # noqa: F401
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mdistiller.cli import run_tool
from mdistiller.engine.evaluate import evaluate
from mdistiller.engine.utils import resolve_device
from mdistiller.errors import ConfigError, DatasetNotFoundError
from mdistiller.experiments.corruptions import CORRUPTIONS, SEVERITIES, CorruptedImages, listed
from mdistiller.experiments.robustness import (PUBLISHED_DIRS, markdown_tables, pixel_source, plot_robustness,
                                               published_set, summarize)

DATASETS = ("cifar100", "imagenet", "tiny_imagenet", "digits")


class Scored:
    """A checkpoint under test: its label, a `score(dataset) -> metric` and what it was loaded from."""

    def __init__(self, label: str, model: str, ckpt: str, score: Callable[[Dataset], float]) -> None:
        self.label, self.model, self.ckpt, self.score = label, model, ckpt, score


def run_label(cfg, model: str) -> str:
    """`model` for a model trained alone, `model <METHOD>` for a distilled one."""
    method = cfg.DISTILLER.TYPE
    return model if method == "NONE" else f"{model} {method}"


def unique(labels: List[str]) -> List[str]:
    """The labels, a repeated one numbered (`resnet8 KD`, `resnet8 KD #2`)."""
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def paired_models(models: Optional[List[str]], ckpts: List[str], required: bool) -> List[str]:
    """One model name per checkpoint: the single -m for all, or one each."""
    models = models or []
    if not models:
        if required:
            raise ConfigError("Give the model of the checkpoints with -m (once for all, or once per -c).")
        return [""] * len(ckpts)
    if len(models) == 1:
        return models * len(ckpts)
    if len(models) != len(ckpts):
        raise ConfigError(f"{len(models)} -m for {len(ckpts)} -c: give one -m for all or one per -c.")
    return models


def classifiers(args: argparse.Namespace, opts: List[str], ckpts: List[str], models: List[str]
                ) -> Tuple[List[Scored], object]:
    """The classification checkpoints (tools/eval.py's loading) and the config of the first."""
    from eval import load_classifier

    scored, first_cfg = [], None
    for model, ckpt in zip(models, ckpts):
        predict, cfg, _, device, autocast = load_classifier(model, ckpt, args.dataset, args.batch_size, opts)
        if first_cfg is not None and cfg.DATASET.IMAGE_SIZE != first_cfg.DATASET.IMAGE_SIZE:
            raise ConfigError(f"{ckpt} reads {args.dataset} at DATASET.IMAGE_SIZE {cfg.DATASET.IMAGE_SIZE}, the first "
                              f"checkpoint at {first_cfg.DATASET.IMAGE_SIZE}: score them in separate calls.")
        first_cfg = first_cfg or cfg

        def score(loader, predict=predict, device=device, autocast=autocast) -> List[float]:
            return list(evaluate(predict, loader, device, autocast))

        scored.append(Scored(run_label(cfg, model), model, ckpt, score))
    return scored, first_cfg


def classification_sets(args: argparse.Namespace, cfg, corruptions: Sequence[str], severities: Sequence[int]
                        ) -> Tuple[Dict[Tuple[str, int], Dataset], Dict[str, str]]:
    """The test set per (corruption, severity), with (None, 0) the clean one, and where each
    corruption's images come from."""
    source = pixel_source(cfg)
    sets: Dict[Tuple[str, int], Dataset] = {(None, 0): CorruptedImages(source, CORRUPTIONS[0], 0)}
    origin = {}
    for corruption in corruptions:
        for severity in severities:
            published = None if args.source == "fly" else published_set(cfg, source, corruption, severity)
            if published is None and args.source == "files":
                where = PUBLISHED_DIRS.get(cfg.DATASET.TYPE, "none is published for this dataset")
                raise DatasetNotFoundError(f"--source files: no published {corruption} at severity {severity} "
                                           f"under {cfg.DATASET.ROOT} ({where}); use --source auto or fly.")
            sets[corruption, severity] = published or CorruptedImages(source, corruption, severity, args.seed)
            origin[corruption] = "files" if published is not None else "on the fly"
    return sets, origin


def limited(dataset: Dataset, limit: int) -> Dataset:
    return Subset(dataset, range(min(limit, len(dataset)))) if limit > 0 else dataset


def score_classifiers(args, scored: List[Scored], sets: Dict[Tuple[str, int], Dataset]) -> Dict[str, Dict]:
    """Top-1 of every checkpoint on every set, the sets loaded once for all checkpoints."""
    accuracy: Dict[str, Dict] = {s.label: {} for s in scored}
    for key, dataset in sets.items():
        started = time.perf_counter()
        loader = DataLoader(limited(dataset, args.limit), batch_size=args.batch_size, num_workers=args.workers)
        counts = {s.label: [0.0, 0] for s in scored}
        for batch in loader:
            for s in scored:
                top1 = s.score([batch])[0]
                counts[s.label][0] += top1 * len(batch[1])
                counts[s.label][1] += len(batch[1])
        for label, (total, n) in counts.items():
            accuracy[label][key] = total / max(n, 1)
        report_line(key, {label: accuracy[label][key] for label in accuracy}, time.perf_counter() - started)
    return accuracy


def report_line(key, values: Dict[str, float], seconds: float) -> None:
    corruption, severity = key
    name = "clean" if corruption is None else f"{corruption} s{severity}"
    print(f"{name:<22} " + "  ".join(f"{label}: {v:.2f}" for label, v in values.items()) + f"  ({seconds:.1f} s)",
          flush=True)


def saved_dense_cfg(ckpt: str):
    """The dense config a checkpoint file holds, or None."""
    from mdistiller.engine.checkpoint import load_checkpoint
    from mdistiller_dense.config import load_dense_cfg_text

    if not os.path.isfile(ckpt) and not os.path.isfile(ckpt + ".pth"):
        return None
    state = load_checkpoint(ckpt)
    return load_dense_cfg_text(state["cfg"]) if "cfg" in state else None


def dense_scores(args, opts, ckpts: List[str], models: List[str], corruptions, severities
                 ) -> Tuple[Dict[str, Dict], List[Scored], str, object]:
    """AP (detection) or mIoU (segmentation) of each dense checkpoint under each corruption."""
    from eval_dense import load_dense

    from mdistiller_dense.corrupted import CorruptedDense
    from mdistiller_dense.trainer import dense_evaluate

    accuracy: Dict[str, Dict] = {}
    scored, metric, cfg = [], "", None
    for model_name, ckpt in zip(models, ckpts):
        model, cfg, val_loader, device, autocast = load_dense(ckpt, args.cfg, model_name, args.batch_size, opts)
        label = run_label(saved_dense_cfg(ckpt) or cfg, model_name or cfg.DISTILLER.STUDENT)
        metric = "AP" if model.detection else "mIoU"
        entry = Scored(label, model_name or cfg.DISTILLER.STUDENT, ckpt, None)
        scored.append(entry)
        accuracy[entry.label] = {}
        keys = [(None, 0)] + [(c, s) for c in corruptions for s in severities]
        for corruption, severity in keys:
            started = time.perf_counter()
            dataset = CorruptedDense(val_loader.dataset, corruption or CORRUPTIONS[0], severity, args.seed)
            loader = DataLoader(dataset, batch_size=val_loader.batch_size, collate_fn=val_loader.collate_fn,
                                num_workers=args.workers)
            results = dense_evaluate(model, loader, device, autocast)
            accuracy[entry.label][corruption, severity] = 100.0 * next(iter(results.values()))
            report_line((corruption, severity), {entry.label: accuracy[entry.label][corruption, severity]},
                        time.perf_counter() - started)
    return accuracy, scored, metric, cfg


def results_of(accuracy: Dict[str, Dict], baseline: Optional[str]) -> Dict[str, Dict]:
    """The scores of each checkpoint (mdistiller.experiments.robustness.summarize) with `accuracy`."""
    tables = {}
    for label, values in accuracy.items():
        per = {}
        for (corruption, severity), value in values.items():
            if corruption is not None:
                per.setdefault(corruption, {})[severity] = value
        tables[label] = {"clean": values[None, 0], "accuracy": per}
    results = {}
    for label, table in tables.items():
        results[label] = {**summarize(table["clean"], table["accuracy"], tables[baseline] if baseline else None),
                          "accuracy": table["accuracy"]}
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Accuracy of checkpoints under the 15 common corruptions.")
    parser.add_argument("-m", "--model", action="append", help="model name (once for all -c, or once per -c)")
    parser.add_argument("-c", "--ckpt", action="append", required=True, help="checkpoint (repeat to compare)")
    parser.add_argument("-d", "--dataset", default="cifar100", choices=DATASETS)
    parser.add_argument("--cfg", default="", help="a dense run's YAML: score detectors (AP) / segmenters (mIoU)")
    parser.add_argument("--baseline", default="", help="checkpoint mCE is relative to (its model: --baseline-model)")
    parser.add_argument("--baseline-model", default="", help="model of --baseline (default the first -m)")
    parser.add_argument("--corruptions", default="", help=f"comma-separated subset of {', '.join(CORRUPTIONS)}")
    parser.add_argument("--severities", default="", help="comma-separated subset of 1,2,3,4,5")
    parser.add_argument("--source", default="auto", choices=("auto", "files", "fly"),
                        help="published corrupted sets under DATASET.ROOT (auto: when present) or on the fly")
    parser.add_argument("--seed", type=int, default=0, help="seed of the on-the-fly corruptions")
    parser.add_argument("--limit", type=int, default=0, help="score the first N test images only (0: all)")
    parser.add_argument("-bs", "--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers corrupting the images")
    parser.add_argument("--json", default="", help="write every score here")
    parser.add_argument("--md", default="", help="write the Markdown tables here")
    parser.add_argument("--plot", default="", help="write accuracy vs severity per corruption family here (PNG)")
    args, opts = parser.parse_known_args(argv)
    if args.limit < 0 or args.workers < 0:
        raise ConfigError("--limit and --workers take 0 or a positive number.")
    if args.limit and args.cfg:
        raise ConfigError("--limit is for classification; a dense run scores DATASET.NUM_VAL images (set it).")
    corruptions = listed(args.corruptions, CORRUPTIONS, "corruption")
    severities = listed(args.severities, SEVERITIES, "severity", int)

    ckpts = list(args.ckpt)
    models = paired_models(args.model, ckpts, required=not args.cfg)
    baseline_label = None
    if args.baseline:
        if args.baseline in ckpts:
            baseline_index = ckpts.index(args.baseline)
        else:
            ckpts.append(args.baseline)
            models.append(args.baseline_model or models[0])
            baseline_index = len(ckpts) - 1

    started = time.perf_counter()
    if args.cfg:
        accuracy, scored, metric, cfg = dense_scores(args, opts, ckpts, models, corruptions, severities)
        origin = {c: "on the fly" for c in corruptions}
        dataset = cfg.DATASET.TYPE
    else:
        scored, cfg = classifiers(args, opts, ckpts, models)
        labels = unique([s.label for s in scored])
        for s, label in zip(scored, labels):
            s.label = label
        sets, origin = classification_sets(args, cfg, corruptions, severities)
        accuracy = score_classifiers(args, scored, sets)
        metric, dataset = "top-1", args.dataset
    if args.baseline:
        baseline_label = scored[baseline_index].label
    results = results_of(accuracy, baseline_label)

    text = markdown_tables(results, metric)
    header = (f"{dataset}: {metric} (%) under {len(corruptions)} corruptions x severities "
              f"{','.join(map(str, severities))}; mPC = mean over them, rPC = mPC / clean"
              + (f", mCE against {baseline_label}" if baseline_label else "") + ".\n\n")
    print("\n" + header + text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(header + text)
    if args.json:
        record = {"dataset": dataset, "metric": metric, "seed": args.seed, "limit": args.limit,
                  "corruptions": corruptions, "severities": severities, "source": origin,
                  "baseline": baseline_label, "seconds": time.perf_counter() - started,
                  "device": str(resolve_device(cfg.SOLVER.DEVICE)),
                  "models": {s.label: {"model": s.model, "checkpoint": s.ckpt, **results[s.label]} for s in scored}}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    if args.plot:
        plot_robustness(results, args.plot, f"{metric} (%)", f"{dataset}: {metric} under corruption, mean per family")
    written = [p for p in (args.md, args.json, args.plot) if p]
    if written:
        print("Wrote " + ", ".join(written))


if __name__ == "__main__":
    run_tool(main)
