"""The papers' pictures of a distilled classifier, one sub-command each, PNGs written into --out.

    python tools/visualize.py saliency  -c RUN/student_best [--student ALONE/student_best] [--teacher T] --out DIR
    python tools/visualize.py poi       -c RUN/student_best [--prompts FILE] [--teacher T] --out DIR
    python tools/visualize.py cam       -c RUN/student_best [--student ALONE/student_best] [--teacher T] --out DIR
    python tools/visualize.py confusion -c RUN/student_best --student ALONE/student_best --out DIR
    python tools/visualize.py curves    -c RUN_A [RUN_B ...] [--metric test_acc] --out DIR

The checkpoint's run (its saved config, else the `cfg.yaml` beside it) says the dataset, the student
and the teacher (DISTILLER.TEACHER_WEIGHTS; --teacher names another file, a teacher's own run's
`student_best`). `--student` is the same student trained alone. KEY VALUE pairs override the config.

* saliency: FreeKD supplement eq. 15-16 (mdistiller/experiments/pictures.py) of the feature maps
  `--stages` (indices into the model's `feats`, default every stage after the stem), for the student
  alone, the distilled student and the teacher, on `--images N` test images of distinct classes:
  `saliency.png`. With `--cfg` (a dense run, checkpoints loaded as tools/eval_dense.py does): of a
  detector's FPN levels or a segmenter's backbone outputs (`--stages` 1 = the first level), on the
  first validation images.
* poi: the pixel masks (PoIs) a FREEKD / AFPKD prompt file (default: the run's, FREEKD.PROMPT_PATH
  or its derived path) gives on the teacher's maps, per band: LL of the coarsest level, and the
  finest level's high bands LH, HL, HH, which share one mask per token (FreeKD's masks come from
  the orientations summed), shown with the HH band it weights, as FreeKD's Figures 5 and 8:
  `poi_level<i>.png` per distilled map.
* cam: Grad-CAM (the grad-cam package) of the true class at each backbone stage (`--layers`,
  default the model's `layer*` / `block*` / `stage*` children) for the three models: `cam.png`.
* confusion: the normalised confusion matrices of the distilled student and `--student` on the
  whole test set and the per-class gain of the diagonal: `confusion.png`, `confusion.md` (largest
  gain first), `confusion.json`.
* curves: a metric of `metrics.jsonl` (`--metric`, default test_acc: top-1, or a dense run's AP /
  mIoU, labelled so) over epochs, one line per run directory given with -c, labelled with its
  method and teacher -> student pair: `curves.png`.

Figure sizes: mdistiller/experiments/pictures.py.
"""

import argparse
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import _path  # noqa: F401
import numpy as np
import torch
from torch import nn

from mdistiller.cli import run_tool
from mdistiller.dataset import build_datasets
from mdistiller.engine.build import build_role_model, build_teacher
from mdistiller.engine.cfg import load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.experiments import pictures
from mdistiller.experiments.runs import read_run

COMMANDS = ("saliency", "poi", "cam", "confusion", "curves")
STAGE_NAME = re.compile(r"(layer|block|stage|stages\.|layers\.)\d+$")


def run_cfg(ckpt: str, opts: Sequence[str], dataset: str = ""):
    """The config of the run `ckpt` belongs to, with the overrides."""
    from eval import saved_config_text

    text = saved_config_text(ckpt, load_checkpoint(ckpt))
    if text is None:
        raise CheckpointError(f"{ckpt} has no saved config and no cfg.yaml beside it: pass a checkpoint of a run.")
    cfg = load_cfg_text(text)
    cfg.defrost()
    if dataset:
        cfg.DATASET.TYPE = dataset
    merge_overrides(cfg, list(opts))
    cfg.freeze()
    return cfg


def student_of(ckpt: str, opts: Sequence[str], dataset: str, num_classes: int) -> nn.Module:
    """The student of the run `ckpt` (its constructor arguments), with the checkpoint's weights."""
    cfg = run_cfg(ckpt, opts, dataset)
    model = build_role_model(cfg, "STUDENT", num_classes)
    load_weights(model, student_state_dict(load_checkpoint(ckpt)), f"Checkpoint {ckpt}")
    return model.eval()


class Models:
    """The distilled student (-c), the student alone (--student) and the teacher, on the test set."""

    def __init__(self, args: argparse.Namespace, opts: Sequence[str]) -> None:
        self.cfg = run_cfg(args.ckpt[0], opts, args.dataset)
        _, self.test_set, self.num_classes = build_datasets(self.cfg)
        self.args, self.opts = args, opts

    def distilled(self) -> nn.Module:
        return student_of(self.args.ckpt[0], self.opts, self.cfg.DATASET.TYPE, self.num_classes)

    def alone(self) -> Optional[nn.Module]:
        if not self.args.student:
            return None
        return student_of(self.args.student, self.opts, self.cfg.DATASET.TYPE, self.num_classes)

    def teacher(self) -> Optional[nn.Module]:
        if self.args.teacher:
            return student_of(self.args.teacher, self.opts, self.cfg.DATASET.TYPE, self.num_classes)
        if self.cfg.DISTILLER.TYPE == "NONE":
            return None
        return build_teacher(self.cfg, self.num_classes).eval()

    def labelled(self) -> List[Tuple[str, nn.Module]]:
        """(label, model) of the student alone, the distilled student and the teacher, those there are."""
        cfg = self.cfg
        out = []
        alone = self.alone()
        if alone is not None:
            out.append((f"{cfg.DISTILLER.STUDENT} alone", alone))
        out.append((f"{cfg.DISTILLER.STUDENT} {cfg.DISTILLER.TYPE}", self.distilled()))
        teacher = self.teacher()
        if teacher is not None:
            out.append((f"teacher {cfg.DISTILLER.TEACHER}", teacher))
        return out

    def images(self, count: int) -> Tuple[torch.Tensor, List[int]]:
        """The first `count` test images of distinct classes (then any), and their labels."""
        chosen, seen = [], set()
        for index in range(len(self.test_set)):
            label = int(self.test_set[index][1])
            if label not in seen:
                chosen.append(index)
                seen.add(label)
            if len(chosen) == count:
                break
        chosen += [i for i in range(len(self.test_set)) if i not in chosen][:count - len(chosen)]
        items = [self.test_set[i] for i in chosen]
        return torch.stack([image for image, _ in items]), [int(label) for _, label in items]


def stage_indices(text: str, count: int) -> List[int]:
    """`--stages` as indices into `feats` (default 1 .. count - 1: every stage after the stem)."""
    if not text:
        return list(range(1, count))
    try:
        indices = [int(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--stages takes comma-separated indices into the model's feats, got {text!r}.") from None
    bad = [i for i in indices if not -count <= i < count]
    if bad:
        raise ConfigError(f"--stages {bad[0]} is out of range: the model has {count} feature maps (0 = stem).")
    return indices


@torch.no_grad()
def draw_saliency(args, models: Models) -> List[str]:
    images, _ = models.images(args.images)
    columns: Dict[str, List[np.ndarray]] = {}
    for label, model in models.labelled():
        feats = model(images)[1]["feats"]
        for index in stage_indices(args.stages, len(feats)):
            maps = pictures.saliency(feats[index], args.tau)
            columns[f"{label}\nfeats[{index}] {tuple(maps.shape[1:])}"] = pictures.masks_for_display(maps)
    path = os.path.join(args.out, "saliency.png")
    pictures.plot_grid(list(images), columns, path, f"feature saliency, FreeKD eq. 15-16 (tau {args.tau})")
    return [path]


def dense_levels(student: nn.Module, images: List[torch.Tensor], detection: bool) -> List[torch.Tensor]:
    """The maps a dense model's backbone gives: a detector's FPN levels (P3, P4, ... on the batch its
    transform resizes and normalises), a segmenter's backbone outputs."""
    if detection:
        batch, _ = student.transform(images)
        return list(student.backbone(batch.tensors).values())
    return list(student.backbone(torch.stack(images)).values())


@torch.no_grad()
def draw_dense_saliency(args, opts: Sequence[str]) -> List[str]:
    """Saliency of the FPN levels (detectors) or backbone outputs (segmenters) of a dense run."""
    from eval_dense import load_dense

    loaded = []
    for role, ckpt in (("alone", args.student), ("distilled", args.ckpt[0]), ("teacher", args.teacher)):
        if ckpt:
            own = "cfg" in load_checkpoint(ckpt)  # a run's file: its own config; else --cfg's
            model, cfg, loader, _, _ = load_dense(ckpt, "" if own else args.cfg, "", 0, opts)
            loaded.append((role, model.cpu().eval(), cfg, loader))
    dataset = loaded[0][3].dataset
    images = [dataset[i][0] for i in range(min(args.images, len(dataset)))]
    columns: Dict[str, List[np.ndarray]] = {}
    for role, model, cfg, _ in loaded:
        levels = dense_levels(model.student, images, model.detection)
        for index in stage_indices(args.stages, len(levels) + 1):
            maps = pictures.saliency(levels[index - 1], args.tau)
            columns[f"{cfg.DISTILLER.STUDENT} {role}\nlevel {index - 1} {tuple(maps.shape[1:])}"] = \
                pictures.masks_for_display(maps)
    path = os.path.join(args.out, "saliency.png")
    shown = images if loaded[0][1].detection else [dataset.std * image + dataset.mean for image in images]
    pictures.plot_grid(shown, columns, path, f"feature saliency, FreeKD eq. 15-16 (tau {args.tau})")
    return [path]


def prompt_file(args, cfg) -> Tuple[str, dict]:
    from mdistiller.distillers.frequency_prompts import prompt_path

    method = cfg.DISTILLER.TYPE if cfg.DISTILLER.TYPE in ("FREEKD", "AFPKD") else "FREEKD"
    path = args.prompts or prompt_path(cfg, method)
    if not os.path.isfile(path):
        raise ConfigError(f"No prompt file at {path}: pass --prompts FILE (stage 1 of FREEKD / AFPKD writes it).")
    return path, torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def draw_poi(args, models: Models) -> List[str]:
    from mdistiller.distillers.frequency_prompts import build_prompts

    path, record = prompt_file(args, models.cfg)
    cfg = models.cfg.clone()
    cfg.defrost()
    cfg[record["method"]].TOKENS, cfg[record["method"]].DWT_LEVELS = record["tokens"], record["levels"]
    prompts = build_prompts(record["channels"], cfg[record["method"]])
    prompts.load_state_dict(record["prompts"])
    teacher = models.teacher()
    if teacher is None:
        raise ConfigError("poi needs the teacher the prompts were learned in: pass --teacher CKPT.")
    images, _ = models.images(args.images)
    feats = teacher(images)[1]["feats"]
    written = []
    for prompt, index in zip(prompts, record["feature_indices"]):
        bands = prompt.decompose(feats[index])
        masks = prompt.masks(bands)  # [LL_L, high bands of level 1 (finest), ...]
        hh = bands.highs[0][:, :, 2].abs().mean(dim=1)  # the finest HH band, channel mean of |coefficients|
        columns: Dict[str, List[np.ndarray]] = {}
        for token in range(prompt.num_tokens):
            columns[f"LL{prompt.levels} PoI t{token}"] = pictures.masks_for_display(masks[0][:, token])
            columns[f"LH/HL/HH PoI t{token}"] = pictures.masks_for_display(masks[1][:, token])
            columns[f"HH x PoI t{token}"] = pictures.masks_for_display(masks[1][:, token] * hh)
        out = os.path.join(args.out, f"poi_level{index}.png")
        pictures.plot_grid(list(images), columns, out, f"{record['method']} frequency PoIs on teacher "
                           f"{record['teacher']} feats[{index}] ({os.path.basename(path)})")
        written.append(out)
    return written


class Logits(nn.Module):
    """A classifier returning its logits only (what Grad-CAM calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)[0]


def through_tap(tap: nn.Module):
    """A forward hook passing a stage's (first) output through `tap`."""
    def hook(module: nn.Module, inputs, out):
        return (tap(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else tap(out)
    return hook


def tapped(model: nn.Module, names: Sequence[str]) -> Tuple[nn.Module, List[nn.Module]]:
    """A copy of `model` whose modules `names` send their (first) output through an identity each,
    returned with it, for Grad-CAM to hook: the stages of MDistiller's CIFAR models return
    (output, pre-activation) pairs, which it cannot."""
    import copy

    model = copy.deepcopy(model)
    taps = []
    for name in names:
        tap = nn.Identity()
        model.get_submodule(name).register_forward_hook(through_tap(tap))
        taps.append(tap)
    return model, taps


def stage_modules(model: nn.Module, names: str) -> List[Tuple[str, nn.Module]]:
    """The modules `names` (comma-separated, as named_modules names them), default the backbone stages."""
    modules = dict(model.named_modules())
    if names:
        missing = [n for n in names.split(",") if n not in modules]
        if missing:
            raise ConfigError(f"--layers {missing[0]}: no such module; the model has {', '.join(list(modules)[1:12])} ...")
        return [(n, modules[n]) for n in names.split(",")]
    found = [(n, m) for n, m in modules.items() if STAGE_NAME.fullmatch(n)]
    if not found:
        raise ConfigError(f"No layer*/block*/stage* modules in {type(model).__name__}: name them with --layers.")
    return found


def draw_cam(args, models: Models) -> List[str]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images, labels = models.images(args.images)
    columns: Dict[str, List[np.ndarray]] = {}
    for label, model in models.labelled():
        names = [name for name, _ in stage_modules(model, args.layers)]
        copy, taps = tapped(model, names)
        wrapped = Logits(copy).eval()
        for name, tap in zip(names, taps):
            with GradCAM(model=wrapped, target_layers=[tap]) as cam:
                maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in labels])
            columns[f"{label}\n{name}"] = list(maps)
    path = os.path.join(args.out, "cam.png")
    pictures.plot_grid(list(images), columns, path, "Grad-CAM of the true class per stage", overlay=True)
    return [path]


def predictions(ckpt: str, cfg, opts: Sequence[str], batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(targets, predicted classes) of a checkpoint over the whole test set, as tools/eval.py predicts."""
    from eval import load_classifier

    predict, _, loader, device, autocast = load_classifier(cfg.DISTILLER.STUDENT, ckpt, cfg.DATASET.TYPE,
                                                           batch_size, list(opts))
    targets, predicted = [], []
    with torch.inference_mode():
        for batch in loader:
            with autocast():
                logits = predict(batch[0].to(device).float())
            predicted.append(logits.float().argmax(1).cpu())
            targets.append(batch[1])
    return torch.cat(targets).numpy(), torch.cat(predicted).numpy()


def draw_confusion(args, models: Models) -> List[str]:
    from mdistiller_dense.evaluation import confusion_matrix

    if not args.student:
        raise ConfigError("confusion compares two checkpoints: pass the student alone with --student CKPT.")
    cfg = models.cfg
    matrices = {}
    names = (f"{cfg.DISTILLER.STUDENT} {cfg.DISTILLER.TYPE}", f"{cfg.DISTILLER.STUDENT} alone")
    for name, ckpt in zip(names, (args.ckpt[0], args.student)):
        other_cfg = run_cfg(ckpt, models.opts, cfg.DATASET.TYPE)
        targets, predicted = predictions(ckpt, other_cfg, models.opts, args.batch_size)
        counts = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(targets), models.num_classes,
                                  ignore_index=-1)
        matrices[name] = pictures.normalized_confusion(counts.numpy())
    gain = pictures.diagonal_gain(matrices[names[0]], matrices[names[1]])
    classes = list(getattr(models.test_set, "classes", [str(i) for i in range(models.num_classes)]))
    path = os.path.join(args.out, "confusion.png")
    pictures.plot_confusions(matrices, gain, classes, path,
                             f"{cfg.DATASET.TYPE}: normalised confusion, {names[0]} against {names[1]}")
    table = pictures.class_gains(gain, classes, matrices[names[0]], matrices[names[1]], names)
    with open(os.path.join(args.out, "confusion.md"), "w") as f:
        f.write(f"Normalised diagonal per class (rows of the confusion matrix sum to 1), {names[0]} against "
                f"{names[1]}; mean gain {gain.mean():+.4f}, classes gaining {int((gain > 0).sum())}, "
                f"losing {int((gain < 0).sum())}.\n\n" + table)
    with open(os.path.join(args.out, "confusion.json"), "w") as f:
        json.dump({"classes": classes, "models": list(names), "matrices": {k: v.tolist() for k, v in matrices.items()},
                   "diagonal_gain": gain.tolist()}, f)
    print(table)
    return [path, os.path.join(args.out, "confusion.md"), os.path.join(args.out, "confusion.json")]


def run_title(run) -> str:
    method = run.key("DISTILLER.TYPE", "NONE")
    student, teacher = run.key("DISTILLER.STUDENT", "?"), run.key("DISTILLER.TEACHER", "")
    if method == "NONE":
        return f"{student} alone"
    return f"{method}: {teacher} → {student}"


def draw_curves(args, opts: Sequence[str]) -> List[str]:
    curves, labels = {}, []
    for directory in args.ckpt:
        directory = directory if os.path.isdir(directory) else os.path.dirname(directory)
        run = read_run(directory)
        if run is None:
            raise ConfigError(f"{directory} is no run directory with cfg.yaml and metrics.jsonl.")
        records = [r for r in run.records if args.metric in r]
        if not records:
            raise ConfigError(f"{directory}/metrics.jsonl has no '{args.metric}'; it logs "
                              f"{', '.join(sorted(run.records[-1]))}.")
        title = run_title(run)
        title = title if title not in curves else f"{title} ({os.path.basename(directory)})"
        curves[title] = ([int(r["epoch"]) for r in records], [float(r[args.metric]) for r in records])
        labels.append(pictures.metric_label(run.records, args.metric))
    path = os.path.join(args.out, "curves.png")
    ylabel = labels[0] if len(set(labels)) == 1 else args.metric
    dataset = read_run(args.ckpt[0] if os.path.isdir(args.ckpt[0]) else os.path.dirname(args.ckpt[0]))
    pictures.plot_metric_curves(curves, ylabel, path, f"{dataset.key('DATASET.TYPE', '')}: {ylabel} per epoch")
    return [path]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="The papers' pictures of a distilled model.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("-c", "--ckpt", action="append", required=True,
                        help="the distilled student's checkpoint (curves: run directories, repeat -c)")
    parser.add_argument("--student", default="", help="the same student trained alone (its checkpoint)")
    parser.add_argument("--teacher", default="", help="the teacher's checkpoint (default the run's TEACHER_WEIGHTS)")
    parser.add_argument("-d", "--dataset", default="", help="dataset (default the run's)")
    parser.add_argument("--cfg", default="", help="saliency of a dense run: its YAML (FPN levels / backbone maps)")
    parser.add_argument("--out", required=True, help="directory the PNGs are written to")
    parser.add_argument("--images", type=int, default=4, help="test images shown (saliency, poi, cam)")
    parser.add_argument("--stages", default="", help="saliency: indices into feats (default every stage)")
    parser.add_argument("--tau", type=float, default=0.5, help="saliency temperature (FreeKD: 0.5)")
    parser.add_argument("--layers", default="", help="cam: module names (default the backbone stages)")
    parser.add_argument("--prompts", default="", help="poi: the prompt file (default the run's)")
    parser.add_argument("--metric", default="test_acc", help="curves: a key of metrics.jsonl")
    parser.add_argument("-bs", "--batch-size", type=int, default=256)
    args, opts = parser.parse_known_args(argv)
    if args.images < 1:
        raise ConfigError("--images must be at least 1.")
    os.makedirs(args.out, exist_ok=True)
    if args.command == "curves":
        written = draw_curves(args, opts)
    elif args.cfg:
        if args.command != "saliency":
            raise ConfigError(f"{args.command} is for classifiers; with --cfg (a dense run) only saliency is drawn.")
        written = draw_dense_saliency(args, opts)
    else:
        draw = {"saliency": draw_saliency, "poi": draw_poi, "cam": draw_cam, "confusion": draw_confusion}
        written = draw[args.command](args, Models(args, opts))
    print("Wrote " + ", ".join(written))


if __name__ == "__main__":
    run_tool(main)
