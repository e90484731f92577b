"""Every method under DDP: 2 processes, gloo on the CPU, a few steps each (docs/distributed.md).

Every registered classification method on digits (FREEKD / AFPKD with their stage 1 through
tools/train_prompt.py), the DOT trainer with a logit method (KD) and a feature method (AT), and
every registered dense method on a tiny shapes set (FREEKD through tools/train_dense_prompt.py)
train two epochs on 2 processes, resume to a third on 2 processes, then to a fourth on one. After
each 2-process run the two ranks' parameters, buffers (BatchNorm statistics, CRD's memory banks
...) and optimizer states are compared exactly; the resumed epoch must change the weights. The
fast teacher is built at most once in a 2-epoch run on each rank (once for CRD and DOT_AT).
The dense CWD student's COCO APs, and the segmenters' (FCN, CanKD-distilled PSPNet) mIoU and pixel accuracy, in the 2-process
run's metrics equal those tools/eval_dense.py prints for the saved student in this one process.

The default suite runs the short form (SHORT: one case per multi-process concern); MDISTILLER_E2E=full
runs every case. tests/ddp_matrix_worker.py is the process (one launch of 2 per test).
"""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
import torch

from conftest import REPO_ROOT
from dense_helpers import SHAPES_OPTS, dense_cfg, save_teacher
from mdistiller.distillers import distiller_dict
from mdistiller.distillers.frequency_prompts import prompt_path
from mdistiller.engine.cfg import CFG, build_cfg
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.engine.loggers import read_metrics
from mdistiller.models import cifar_model_dict
from mdistiller.models.external import build_external_model
from mdistiller_dense.distillers import dense_distiller_dict
from mdistiller_dense.evaluation import COCO_STATS
from helpers import communicate_all, process_env

pytestmark = pytest.mark.e2e

WORKER = os.path.join(REPO_ROOT, "tests", "ddp_matrix_worker.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits")
SHAPES = os.path.join(REPO_ROOT, "configs", "shapes")
# A method that cannot run under DDP and says so before training (none today): name -> words of its one line.
REFUSED: dict = {}
# The short form (the default suite): one case per multi-process concern. SFAKD: a student
# parameter no loss reaches (frozen); CRD: memory banks updated from every process; OFD: the
# teacher in train mode (its BatchNorm statistics); FREEKD: stage 1 under DDP; FREEKD_vit_teacher: stage 1
# inside a ViT teacher's token stream under DDP, stage 2 from its file; OFA_swin_student: a token student
# without prefix tokens, whose branches must hold no parameter that no loss reaches (find_unused_parameters
# is False for OFA); SFAKD_vit_pair: SFAKD through a ViT teacher's head, the ViT student's own head and
# final norm frozen (no gradient reaches them); DOT_AT: DOT's two gradients through feature hooks; dense
# CWD: a dense distiller, and the AP of the whole validation set; dense PSPNet CanKD: PSPNet's auxiliary
# head and a distiller on a segmenter, the mIoU of the whole set (it stands for the plain segmenter case
# in the short form). MDISTILLER_E2E=full runs every case.
SHORT = {"SFAKD", "SFAKD_vit_pair", "CRD", "OFD", "FREEKD", "DOT_AT", "OFA_vit_teacher", "OFA_swin_student",
         "FREEKD_vit_teacher", "dense_CWD", "dense_pspnet_CANKD"}
# Per-case settings for the tiny runs: CRD draws fewer negatives per sample (the drawing dominates its step).
# DEIT needs a student with a distillation token: a tiny timm distilled DeiT on the 16 px digits.
EXTRA = {"CRD": ["CRD.NCE.K=64"],
         "DEIT": ["DISTILLER.STUDENT=timm:deit_tiny_distilled_patch16_224", "MODEL.STUDENT_KWARGS.patch_size=4",
                  "MODEL.STUDENT_KWARGS.embed_dim=32", "MODEL.STUDENT_KWARGS.depth=2",
                  "MODEL.STUDENT_KWARGS.num_heads=2"]}
TINY_VIT_KWARGS = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}  # 16 px digits: a 4x4 grid
# 16 px digits: stages of 8x8, 4x4, 2x2, 1x1 tokens, 16 to 128 wide
TINY_SWIN_KWARGS = {"patch_size": 2, "window_size": 2, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
FREEKD_VIT_KWARGS = dict(TINY_VIT_KWARGS, depth=3)  # 3 taps: FREEKD's last 2, one of them mid-stream


def selected(cases, full: bool):
    return cases if full else [case for case in cases if case["name"] in SHORT]


def classification_cases(tmp_path):
    teacher_file = tmp_path / "digits_teacher.pth"
    torch.manual_seed(0)
    save_checkpoint({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, str(teacher_file))
    common = [f"LOG.PREFIX={tmp_path / 'cls'}", f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", "SOLVER.AMP=False",
              "SOLVER.BATCH_SIZE=512", "DATASET.TEST.BATCH_SIZE=512", "LOG.PROGRESS_BAR=False"]
    cases = []
    for method in sorted(distiller_dict.keys()):
        own = os.path.join(DIGITS, f"{method.lower()}.yaml")
        config, typed = (own, []) if os.path.isfile(own) else (os.path.join(DIGITS, "student.yaml"),
                                                                [f"DISTILLER.TYPE={method}"])
        prompts = method in CFG and "PROMPT_PATH" in CFG[method]  # the test tools/train_prompt.py makes
        stage1 = [f"{method}.PROMPT_EPOCHS=1"] if prompts else []
        cases.append({"name": method, "tool": "train",
                      "args": ["--cfg", config, *typed, *common, *stage1, *EXTRA.get(method, [])],
                      "stage1": "train_prompt" if prompts else ""})
    for method in ("KD", "AT"):
        cases.append({"name": f"DOT_{method}", "tool": "train", "stage1": "",
                      "args": ["--cfg", os.path.join(DIGITS, f"{method.lower()}.yaml"), *common, "SOLVER.TRAINER=dot"]})
    vit_file = tmp_path / "digits_vit_teacher.pth"
    vit = build_external_model("timm:vit_tiny_patch16_224", 10, 16, TINY_VIT_KWARGS)
    save_checkpoint({"model": vit.state_dict()}, str(vit_file))
    vit_kwargs = [f"MODEL.TEACHER_KWARGS.{k}={v}" for k, v in TINY_VIT_KWARGS.items()]
    cases.append({"name": "OFA_vit_teacher", "tool": "train", "stage1": "",
                  "args": ["--cfg", os.path.join(DIGITS, "student.yaml"), *common, "DISTILLER.TYPE=OFA",
                           "DISTILLER.TEACHER=timm:vit_tiny_patch16_224", f"DISTILLER.TEACHER_WEIGHTS={vit_file}",
                           *vit_kwargs]})
    cases.append({"name": "SFAKD_vit_pair", "tool": "train", "stage1": "",
                  "args": ["--cfg", os.path.join(DIGITS, "student.yaml"), *common, "DISTILLER.TYPE=SFAKD",
                           "DISTILLER.TEACHER=timm:vit_tiny_patch16_224", f"DISTILLER.TEACHER_WEIGHTS={vit_file}",
                           *vit_kwargs, "DISTILLER.STUDENT=timm:vit_tiny_patch16_224", "SOLVER.TYPE=AdamW",
                           "SOLVER.LR=0.001", *[f"MODEL.STUDENT_KWARGS.{k}={v}" for k, v in TINY_VIT_KWARGS.items()]]})
    swin_kwargs = [f"MODEL.STUDENT_KWARGS.{k}={v}".replace(" ", "") for k, v in TINY_SWIN_KWARGS.items()]
    cases.append({"name": "OFA_swin_student", "tool": "train", "stage1": "",
                  "args": ["--cfg", os.path.join(DIGITS, "student.yaml"), *common, "DISTILLER.TYPE=OFA",
                           "DISTILLER.STUDENT=timm:swin_tiny_patch4_window7_224", "SOLVER.TYPE=AdamW",
                           "SOLVER.LR=0.001", *swin_kwargs]})
    freekd_vit_file = tmp_path / "digits_vit3_teacher.pth"
    freekd_vit = build_external_model("timm:vit_tiny_patch16_224", 10, 16, FREEKD_VIT_KWARGS)
    save_checkpoint({"model": freekd_vit.state_dict()}, str(freekd_vit_file))
    cases.append({"name": "FREEKD_vit_teacher", "tool": "train", "stage1": "train_prompt",
                  "args": ["--cfg", os.path.join(DIGITS, "freekd.yaml"), *common, "FREEKD.PROMPT_EPOCHS=1",
                           "DISTILLER.TEACHER=timm:vit_tiny_patch16_224",
                           f"DISTILLER.TEACHER_WEIGHTS={freekd_vit_file}",
                           *[f"MODEL.TEACHER_KWARGS.{k}={v}" for k, v in FREEKD_VIT_KWARGS.items()]]})
    return cases


def dense_cases(tmp_path):
    cfg = dense_cfg(tmp_path, "NONE")
    save_teacher(cfg)
    common = SHAPES_OPTS + ["DATASET.ROOT", str(tmp_path / "data"), "LOG.PREFIX", str(tmp_path / "dense"),
                            "LOG.SAVE_CHECKPOINT_FREQ", "1", "CANKD.LEVELS", "3",  # 64 px: the 4th level is 1x1
                            "DISTILLER.STUDENT", "fcos_resnet18_fpn", "DISTILLER.TEACHER", "fcos_resnet18_fpn",
                            "DISTILLER.TEACHER_WEIGHTS", cfg.DISTILLER.TEACHER_WEIGHTS]
    cases = []
    for method in sorted(dense_distiller_dict.keys()):
        own = os.path.join(SHAPES, f"{method.lower()}.yaml")
        config = own if os.path.isfile(own) else os.path.join(SHAPES, "student.yaml")
        stage1 = ["FREEKD.PROMPT_EPOCHS", "1"] if method == "FREEKD" else []
        cases.append({"name": f"dense_{method}", "tool": "train_dense", "stage1": "train_dense_prompt" if stage1 else "",
                      "args": ["--cfg", config, *common, "DISTILLER.TYPE", method, *stage1]})
    cases.append({"name": "dense_segmenter", "tool": "train_dense", "stage1": "",
                  "args": ["--cfg", os.path.join(SHAPES, "student.yaml"), *common, "DISTILLER.TYPE", "NONE",
                           "DISTILLER.STUDENT", "fcn_resnet18"]})
    psp = dense_cfg(tmp_path, "NONE", "pspnet_resnet18", "pspnet_resnet18", extra=["MODEL.AUX_LOSS", "True"])
    save_teacher(psp)
    cases.append({"name": "dense_pspnet_CANKD", "tool": "train_dense", "stage1": "",  # PSPNet + aux head, distilled
                  "args": ["--cfg", os.path.join(SHAPES, "pspnet_cankd.yaml"), *common, "DATASET.CROP_SIZE", "48",
                           "DISTILLER.STUDENT", "pspnet_resnet18", "DISTILLER.TEACHER", "pspnet_resnet18",
                           "DISTILLER.TEACHER_WEIGHTS", psp.DISTILLER.TEACHER_WEIGHTS]})
    return cases


def launch(tmp_path, cases, out):
    """The reports of rank 0, rank 1 (2 processes) and rank 0 (alone, the last part) of the worker."""
    cases_file = tmp_path / f"cases_{out.name}.json"
    cases_file.write_text(json.dumps(cases))
    store = tmp_path / f"store_{out.name}"
    procs = [subprocess.Popen([sys.executable, WORKER, str(store), str(rank), str(cases_file), str(out)],
                              cwd=str(tmp_path), env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for rank in (0, 1)]
    for code, out_text, err in communicate_all(procs, timeout=900):
        assert code == 0, f"exit {code}\n{out_text[-2000:]}\n{err[-4000:]}"
    return [json.loads((out / name).read_text()) for name in ("rank0_2.json", "rank1_2.json", "rank0_1.json")]


def assert_same(a, b, where: str) -> None:
    """Exactly equal nested dicts / lists of tensors and numbers."""
    if isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where} differs between the ranks (max |diff| {(a.double() - b.double()).abs().max()})"
    else:
        assert a == b, where


def check_matrix(tmp_path, cases, out):
    """Both ranks trained every case (or refused as REFUSED says), identically; resumes worked."""
    rank0, rank1, single = launch(tmp_path, cases, out)
    print(json.dumps({"2 processes": rank0, "1 process": single}))  # the figures of docs/distributed.md
    trained = []
    for case in cases:
        name = case["name"]
        outcome = rank0[name]["outcome"]
        assert rank1[name]["outcome"] == outcome, name
        if name in REFUSED:
            assert outcome.startswith("refused:") and REFUSED[name] in outcome, outcome
            continue
        assert outcome == "trained", f"{name}: {outcome}"
        trained.append(case)
        assert rank0[name]["teacher_builds"] == rank1[name]["teacher_builds"] <= 1, name  # once a run, or never
        states = {}
        for epoch in (2, 3):
            a, b = (torch.load(out / name / f"rank{r}_epoch{epoch}.pt", weights_only=True) for r in (0, 1))
            assert_same(a, b, f"{name} epoch {epoch}")
            states[epoch] = a["model"]
        learnable = [k for k, v in states[2].items() if v.is_floating_point() and not k.startswith("teacher.")]
        assert any(not torch.equal(states[2][k], states[3][k]) for k in learnable), f"{name}: epoch 3 changed nothing"
    assert sorted(single) == sorted(case["name"] for case in trained)
    for case in trained:
        assert single[case["name"]]["outcome"] == "trained", single[case["name"]]
        assert (out / case["name"] / "rank0_epoch4.pt").is_file()
    return rank0


def test_every_classification_method_under_two_processes(tmp_path, e2e_full):
    cases = classification_cases(tmp_path)
    assert {"FREEKD", "AFPKD", "CRD", "SFAKD", "DOT_KD", "DOT_AT"} <= {c["name"] for c in cases}
    cases = selected(cases, e2e_full)
    rank0 = check_matrix(tmp_path, cases, tmp_path / "cls_out")
    for case in cases:
        latest = load_checkpoint(str(tmp_path / "cls" / case["name"] / "latest"))
        assert latest["epoch"] == 4, case["name"]
    builds = {case["name"]: rank0[case["name"]]["teacher_builds"] for case in cases}
    assert all(builds[name] == 1 for name in ("CRD", "DOT_AT") if name in builds), builds
    (vit_case,) = [case for case in cases if case["name"] == "FREEKD_vit_teacher"]
    record = load_checkpoint(prompt_path(build_cfg(vit_case["args"][1], vit_case["args"][2:]), "FREEKD"))
    assert record["teacher"] == "timm:vit_tiny_patch16_224" and record["epoch"] == 1  # stage 1 in the ViT ran
    assert record["feature_indices"] == [1, 2] and record["channels"] == [32, 32]
    stage2 = load_checkpoint(str(tmp_path / "cls" / "FREEKD_vit_teacher" / "latest"))["model"]
    for key, value in record["prompts"].items():  # stage 2 (both ranks, compared above) read the learned file
        assert torch.equal(stage2[f"prompts.{key}"], value), key


def test_every_dense_method_under_two_processes_and_ap_of_the_whole_validation_set(tmp_path, e2e_full):
    cases = selected(dense_cases(tmp_path), e2e_full)
    check_matrix(tmp_path, cases, tmp_path / "dense_out")
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import eval_dense

    segmenter = ("miou", "pixel_acc")
    ran = {case["name"] for case in cases}
    for name, scores in (("dense_CWD", COCO_STATS), ("dense_segmenter", segmenter), ("dense_pspnet_CANKD", segmenter)):
        if name not in ran:
            continue
        run = tmp_path / "dense" / name
        scored = read_metrics(str(run))[2]  # epoch 3, scored under 2 processes
        assert scored["test_" + scores[1]] > 0, name  # else the comparison below shows nothing
        printed = io.StringIO()
        with redirect_stdout(printed):
            eval_dense.main(["-c", str(run / "student_3"), "DATASET.ROOT", str(tmp_path / "data")])
        assert printed.getvalue().strip() == "  ".join(f"{s}: {scored['test_' + s]:.2f}" for s in scores), name
