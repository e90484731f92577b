"""The SFAKD README's commands (shared/seeds/003, "Training & Evaluation"), as its users type them, on
tiny data in the real formats: train with `-d imagenet`, runs in `output/sfakd_<pair>/`, and
`tools/eval.py -m ... -c output/sfakd_<pair>/student_best.pth` printing the accuracy the run's best
checkpoint recorded, through SFAKD's prediction path (projector and the teacher's classifier).

The commands below are copied from the README. Only what a test cannot avoid is added: one or two
epochs (`SOLVER.EPOCHS`), no loader workers on ImageNet (`DATASET.NUM_WORKERS 0`), 64 px ImageNet
images (`DATASET.IMAGE_SIZE 64`, read back by eval from the run's config), and the environment saying
where the random teachers lie (MDISTILLER_CKPT_ROOT, torchvision's TORCH_HOME) and that the fake
CIFAR-100 has its own checksums (MDISTILLER_SKIP_CIFAR_MD5).
"""

import os
import re
import shlex

import pytest
import torch

from conftest import REPO_ROOT, run_tool, run_tool_in_process
from fake_data import write_fake_cifar100, write_fake_imagenet
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.models import cifar_model_dict, imagenet_model_dict
from mdistiller.models.checkpoint_dir import CKPT_ROOT_ENV
from mdistiller.models.imagenet import resnet as imagenet_resnet
from mdistiller.models.imagenet._weights import torchvision_weights_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

README_CIFAR_TRAIN = "python3 tools/train.py --cfg configs/cifar100/sfakd/res32x4_res8x4.yaml"
README_CIFAR_TRAIN_OVERRIDES = ("python3 tools/train.py --cfg configs/cifar100/sfakd/res32x4_res8x4.yaml "
                                "SOLVER.BATCH_SIZE 128 SOLVER.LR 0.1")
README_IMAGENET_TRAIN = "python3 tools/train.py --cfg configs/imagenet/r34_r18/sfakd.yaml -d imagenet"
README_CIFAR_EVAL = "python3 tools/eval.py -m resnet8x4 -c output/sfakd_res32x4_res8x4/student_best.pth"
README_IMAGENET_EVAL = "python3 tools/eval.py -m MobileNetV1 -c output/sfakd_res50_mv1/student_best.pth -d imagenet"
# The run README_IMAGENET_EVAL evaluates: the README's ImageNet training command for its other pair.
IMAGENET_R50_MV1_TRAIN = "python3 tools/train.py --cfg configs/imagenet/r50_mv1/sfakd.yaml -d imagenet"
IMAGENET_TINY = " SOLVER.EPOCHS 1 DATASET.NUM_WORKERS 0 DATASET.IMAGE_SIZE 64"


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A directory laid out as the README's clone: tools/, configs/, data/, download_ckpts/."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home(tmp_path)))  # where torchvision_weights_path looks
    for name in ("tools", "configs"):
        os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
    write_fake_cifar100(tmp_path / "data", num_train=16, num_test=12)
    write_fake_imagenet(tmp_path / "data", train_per_class=2, val_per_class=2)  # 3 classes
    torch.manual_seed(0)
    teacher = tmp_path / "ckpts" / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    torch.save({"model": cifar_model_dict["resnet32x4"][0](num_classes=100).state_dict()}, teacher)
    return tmp_path


def place_torchvision_teachers() -> None:
    """Random ResNet34 / ResNet50 where torchvision keeps their ImageNet weights (under TORCH_HOME)."""
    for name in ("ResNet34", "ResNet50"):
        path = torchvision_weights_path(getattr(imagenet_resnet, f"{name}_Weights").IMAGENET1K_V1)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(imagenet_model_dict[name](pretrained=False).state_dict(), path)


def run(command: str, cwd, status: int = 0, subprocess: bool = False) -> str:
    """`command` (a README line) in `cwd`, as `python3` runs it: in this process (conftest's
    `run_tool_in_process`) or, with `subprocess`, in its own (where the teachers' directory, read
    at import, is to come from MDISTILLER_CKPT_ROOT); its stdout (its stderr when it is to end with
    `status` other than 0)."""
    argv = shlex.split(command)
    assert argv[0] == "python3"
    env = {CKPT_ROOT_ENV: str(cwd / "ckpts"), "TORCH_HOME": str(torch_home(cwd)), SKIP_MD5_ENV: "1"}
    if subprocess:
        result = run_tool(*argv[1:], cwd=str(cwd), env=dict(env, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1"))
    else:
        result = run_tool_in_process(*argv[1:], cwd=str(cwd), env=env)
    assert result.returncode == status, result.stderr[-2000:]
    return result.stdout if status == 0 else result.stderr


def torch_home(cwd):
    return cwd / "torch_home"


def eval_top1(stdout: str) -> str:
    return re.search(r"Top-1: (\d+\.\d\d)", stdout).group(1)


def test_the_cifar_commands_train_where_the_readme_evaluates(readme_dir):
    run(README_CIFAR_TRAIN + " SOLVER.EPOCHS 2", readme_dir, subprocess=True)
    run_dir = readme_dir / "output" / "sfakd_res32x4_res8x4"
    best = load_checkpoint(str(run_dir / "student_best"))
    assert not (run_dir / "student_best.pth").exists()  # the name is accepted, no second copy
    out = run(README_CIFAR_EVAL, readme_dir)
    assert "SFAKD predicts through modules beside the student" in out
    assert eval_top1(out) == f"{best['acc']:.2f}"
    full = load_checkpoint(str(run_dir / "best"))
    assert full["epoch"] == best["epoch"] and f"{full['best_acc']:.2f}" == eval_top1(out)


def test_the_imagenet_commands_with_d_imagenet(readme_dir):
    place_torchvision_teachers()
    out = run(README_IMAGENET_TRAIN + IMAGENET_TINY, readme_dir)
    assert "Best accuracy" in out and (readme_dir / "output" / "sfakd_res34_res18" / "best").is_file()
    run(IMAGENET_R50_MV1_TRAIN + IMAGENET_TINY, readme_dir)
    best = load_checkpoint(str(readme_dir / "output" / "sfakd_res50_mv1" / "student_best"))
    assert eval_top1(run(README_IMAGENET_EVAL, readme_dir)) == f"{best['acc']:.2f}"


def test_d_is_dataset_type_and_wins_over_the_config_and_the_overrides(readme_dir):
    err = run(README_CIFAR_TRAIN_OVERRIDES + " DATASET.TYPE imagenet -d cifar1000", readme_dir, status=2)
    assert len(err.strip().splitlines()) == 1 and "cifar1000" in err and "cifar100" in err
