"""A method and a model from outside the package: examples/my_kd_plugin registers the distiller
LOGIT_MSE (with its config section) and the model tiny_cnn; tools/train.py trains them on digits
after EXPERIMENT.PLUGINS or --plugin names the package, and the plugin's keys merge strictly."""

import json
import os

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
PLUGIN_DIR = os.path.join(REPO_ROOT, "examples", "my_kd_plugin")
CONFIG = os.path.join("examples", "my_kd_plugin", "configs", "digits_logit_mse.yaml")
ON_PATH = {"PYTHONPATH": os.pathsep.join([PLUGIN_DIR, os.environ.get("PYTHONPATH", "")])}


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_the_example_plugin_trains_on_digits_through_tools_train(tool, tmp_path):
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    opts = [f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", f"LOG.PREFIX={tmp_path / 'out'}", "EXPERIMENT.NAME=plugin",
            "SOLVER.EPOCHS=1", "DATASET.IMAGE_SIZE=8", "DATASET.TRAIN_FRACTION=0.25"]   # a quarter of the split
    result = tool(TRAIN, "--cfg", CONFIG, *opts, env=ON_PATH)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "out" / "quickstart" / "plugin"
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["epoch"] == 1 and metrics["loss_kd"] > 0 and 0.0 <= metrics["test_acc"] <= 100.0
    saved = yaml.safe_load((run / "cfg.yaml").read_text())
    assert saved["EXPERIMENT"]["PLUGINS"] == ["my_kd_plugin"] and saved["LOGIT_MSE"] == {"CE_WEIGHT": 1.0,
                                                                                      "MSE_WEIGHT": 0.05}
    student = torch.load(run / "student_latest", weights_only=True)["model"]
    assert set(student) >= {"stem.0.weight", "stage2.1.running_mean", "fc.weight"} and student["fc.weight"].shape == (10, 64)


def test_plugin_keys_merge_strictly_and_need_the_plugin(tool, tool_in_process, tmp_path):
    opts = ["--cfg", os.path.join("configs", "digits", "student.yaml"), "DISTILLER.TYPE=LOGIT_MSE",
            "DISTILLER.STUDENT=tiny_cnn", f"LOG.PREFIX={tmp_path}"]
    typo = one_error_line(tool(TRAIN, "--plugin", "my_kd_plugin", *opts, "LOGIT_MSE.MSE_WEIGT=1", env=ON_PATH))
    assert "Unknown config key 'LOGIT_MSE.MSE_WEIGT'" in typo and "LOGIT_MSE.MSE_WEIGHT" in typo
    without = one_error_line(tool(TRAIN, *opts, "LOGIT_MSE.MSE_WEIGHT=1", env=ON_PATH))
    assert "Unknown config key 'LOGIT_MSE.MSE_WEIGHT'" in without
    # in this process: the import fails, so nothing is registered here (the plugin itself only in subprocesses)
    missing = one_error_line(tool_in_process(TRAIN, "--plugin", "not_a_plugin_module", *opts))
    assert "Plugin 'not_a_plugin_module' cannot be imported" in missing and "PYTHONPATH" in missing
