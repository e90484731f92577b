"""Stage 1 -> stage 2 of the prompt methods through the tools, as a user runs them on digits:
tools/train.py without prompts says the exact stage-1 command, tools/train_prompt.py writes the
prompts, tools/train.py with the same arguments loads them frozen and trains."""

import json
import os
import shlex

import pytest
import torch

from conftest import REPO_ROOT
from mdistiller.models import cifar_model_dict

pytestmark = pytest.mark.e2e

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
TRAIN_PROMPT = os.path.join(REPO_ROOT, "tools", "train_prompt.py")
METHODS = ["FREEKD", "AFPKD"]


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("method", METHODS)
def test_stage1_then_stage2_through_the_tools_on_digits(tool, tmp_path, method):
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    config = os.path.join("configs", "digits", f"{method.lower()}.yaml")
    opts = [f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", f"LOG.PREFIX={tmp_path / 'out'}", "EXPERIMENT.NAME=s2",
            "SOLVER.EPOCHS=1", f"{method}.PROMPT_EPOCHS=1", "DATASET.IMAGE_SIZE=8"]
    stage1 = " ".join(shlex.quote(a) for a in ["python", "tools/train_prompt.py", "--cfg", config, *opts])

    missing = tool(TRAIN, "--cfg", config, *opts)
    assert missing.returncode == 2, missing.stderr
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"run `{stage1}` first" in lines[0], lines

    learned = tool(TRAIN_PROMPT, "--cfg", config, *opts)
    assert_ok(learned)
    prompt_file = next((tmp_path / "out" / "quickstart" / "prompts").glob("*.pth"))
    assert f"Saved the prompts to {prompt_file}" in learned.stdout
    record = torch.load(prompt_file, weights_only=True)
    assert record["method"] == method and record["epoch"] == 1 and record["teacher"] == "wrn_16_2"
    saved_tokens = record["prompts"]

    trained = tool(TRAIN, "--cfg", config, *opts)
    assert_ok(trained)
    run = tmp_path / "out" / "quickstart" / "s2"
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["epoch"] == 1 and metrics["loss_kd"] > 0
    state = torch.load(run / "latest", weights_only=True)["model"]
    for key, value in saved_tokens.items():  # frozen in stage 2: the checkpoint holds them unchanged
        assert torch.equal(state[f"prompts.{key}"], value), key
