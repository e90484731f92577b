"""The two stages of the prompt methods through the tools, as a user runs them on digits: one
tools/train.py command learns the prompts (stage 1, the "PROMPTS" stage the method declares) and
then trains with them frozen (stage 2); `--resume` continues stage 1 where it stopped; stage 1 also
runs alone with tools/train_prompt.py; every run directory's config says its stage.

tools/train.py runs as a subprocess in the FREEKD case and tools/train_prompt.py in the AFPKD case;
the other commands call the same scripts in this process (`tool_in_process`), saving the start-up."""

import json
import os

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
TRAIN_PROMPT = os.path.join(REPO_ROOT, "tools", "train_prompt.py")
METHODS = ["FREEKD", "AFPKD"]


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def stage_of(run_dir) -> str:
    with open(os.path.join(run_dir, "cfg.yaml")) as f:
        return yaml.safe_load(f)["EXPERIMENT"]["STAGE"]


@pytest.mark.parametrize("method", METHODS)
def test_one_command_runs_stage1_then_stage2_on_digits(tool, tool_in_process, tmp_path, method):
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    config = os.path.join("configs", "digits", f"{method.lower()}.yaml")
    # a quarter of the train split (stratified): the checks are of files and stages, not of accuracy
    opts = [f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", f"LOG.PREFIX={tmp_path / 'out'}", "EXPERIMENT.NAME=s2",
            "DATASET.TRAIN_FRACTION=0.25", "SOLVER.EPOCHS=1", f"{method}.PROMPT_EPOCHS=1", "DATASET.IMAGE_SIZE=8"]

    trained = (tool if method == "FREEKD" else tool_in_process)(TRAIN, "--cfg", config, *opts)
    assert_ok(trained)
    prompt_file = next((tmp_path / "out" / "quickstart" / "prompts").glob("*.pth"))
    record = torch.load(prompt_file, weights_only=True)
    assert record["method"] == method and record["epoch"] == 1 and record["teacher"] == "wrn_16_2"
    run = tmp_path / "out" / "quickstart" / "s2"
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["epoch"] == 1 and metrics["loss_kd"] > 0
    state = torch.load(run / "latest", weights_only=True)["model"]
    for key, value in record["prompts"].items():  # frozen in stage 2: the checkpoint holds them as stage 1 left them
        assert torch.equal(state[f"prompts.{key}"], value), key
    stage1_dir = str(prompt_file)[:-len(".pth")]
    assert stage_of(stage1_dir) == "PROMPTS" and stage_of(run) == "TRAIN"

    if method == "FREEKD":  # stage 1 one epoch longer, resumed from its own checkpoint; stage 2 then starts afresh
        resumed = tool_in_process(TRAIN, "--cfg", config, *opts[:-2], f"{method}.PROMPT_EPOCHS=2", "DATASET.IMAGE_SIZE=8",
                       "--resume")
        assert_ok(resumed)
        assert f"Resumed from {os.path.join(stage1_dir, 'latest')} at epoch 2" in resumed.stdout
        assert torch.load(prompt_file, weights_only=True)["epoch"] == 2
        assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    else:  # stage 1 alone, then the one command finds it done and only trains
        os.remove(prompt_file)
        learned = tool(TRAIN_PROMPT, "--cfg", config, *opts)
        assert_ok(learned)
        assert f"Saved the prompts to {prompt_file}" in learned.stdout
        again = tool_in_process(TRAIN, "--cfg", config, *opts)
        assert_ok(again)
        assert f"== stage PROMPTS: done, {prompt_file}" in again.stdout and "stage 1: prompts" not in again.stdout
