"""Sweep files (configs/sweeps/*.yaml): valid keys and types, commands that tools/train.py parses,
a metric train.py logs; and the expansion of grid and random searches."""

import glob
import hashlib
import json
import os
import sys

import pytest
import yaml

from conftest import REPO_ROOT
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.experiment import experiment_name
from mdistiller.engine.run import train_run
from mdistiller.errors import ConfigError
from mdistiller.experiments.runs import SUMMARY_METRICS
from mdistiller.experiments.sweep_runner import SweepRunner, Trial
from mdistiller.experiments.sweeps import (assignments, check_sweep, config_key_default, expand_command,
                                           grid_assignments, load_sweep, random_assignments, train_arguments)
from mdistiller.experiments.tables import read_csv

SWEEP_DIR = os.path.join(REPO_ROOT, "configs", "sweeps")
SWEEP_FILES = sorted(glob.glob(os.path.join(SWEEP_DIR, "*.yaml")))
DIGITS_STUDENT = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")


@pytest.fixture(scope="module")
def logged_metrics(tmp_path_factory):
    """The names a real run logs: its per-epoch record (wandb `log`) and its summary (best_acc)."""
    prefix = tmp_path_factory.mktemp("logged")
    cfg = build_cfg(DIGITS_STUDENT, [f"LOG.PREFIX={prefix}", "EXPERIMENT.NAME=probe", "SOLVER.EPOCHS=1",
                                     "DATASET.IMAGE_SIZE=8", "SOLVER.BATCH_SIZE=256"])
    trainer = train_run(cfg, verbose=False)
    with open(os.path.join(trainer.run_dir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    return (set(record) - {"epoch"}) | set(SUMMARY_METRICS)


def test_sweep_files_cover_the_main_methods():
    methods = set()
    for path in SWEEP_FILES:
        spec = load_sweep(path)
        cfg = build_cfg(*train_arguments(expand_command(spec, assignments(spec, 1)[0]), spec["program"]))
        methods.add(cfg.DISTILLER.TYPE)
    required = {"KD", "DKD", "SFAKD", "CANKD", "FREEKD"}
    assert required <= methods, f"no sweep file for {sorted(required - methods)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
def test_sweep_file_is_valid(path, logged_metrics, tmp_path):
    spec = load_sweep(path)
    assert spec["program"] == "tools/train.py"
    assert "${args_no_hyphens}" in spec["command"] and "--cfg" in spec["command"]
    assert spec["metric"]["name"] in logged_metrics, f"train.py logs no {spec['metric']['name']}"
    check_sweep(spec)  # every key, value type and expanded command
    # Each expanded command carries its trial's values into the config, with the key's type.
    for params in assignments(spec, count=None if spec["method"] == "grid" else 5)[:12]:
        cfg_file, opts = train_arguments(expand_command(spec, params), spec["program"])
        assert os.path.isfile(os.path.join(REPO_ROOT, cfg_file))
        cfg = build_cfg(os.path.join(REPO_ROOT, cfg_file), opts)
        for key, value in params.items():
            built = config_key_default(cfg, key)
            assert built == value and type(built) is type(config_key_default(build_cfg(os.path.join(REPO_ROOT, cfg_file)), key))


def write_sweep(tmp_path, parameters, method="grid", cfg=DIGITS_STUDENT, command_args="${args_no_hyphens}"):
    spec = {"program": "tools/train.py", "method": method, "metric": {"name": "best_acc", "goal": "maximize"},
            "parameters": parameters,
            "command": ["${env}", "${interpreter}", "${program}", "--cfg", cfg, command_args]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("parameters, fragment", [
    ({"KD.TEMPERTURE": {"values": [1.0]}}, "closest valid keys: KD.TEMPERATURE"),
    ({"KD.TEMPERATURE": {"values": [4.0, "hot"]}}, "expects float"),
    ({"DKD.WARMUP": {"distribution": "uniform", "min": 1, "max": 5.5}}, "draws real numbers"),
    ({"NOPEKD.LOSS.WEIGHT": {"value": 1.0}}, "Unknown config key"),
    ({"DISTILLER.TYPE": {"values": ["KD", "NOPEKD"]}}, "NOPEKD"),
])
def test_invalid_sweep_files_fail_naming_the_problem(tmp_path, parameters, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        check_sweep(load_sweep(write_sweep(tmp_path, parameters, method="random")))


def test_grid_is_the_product_of_the_values_last_fastest():
    params = {"A.X": {"values": [1, 2]}, "B.Y": {"value": "c"}, "C.Z": {"values": [0.5, 1.5, 2.5]}}
    expected = []
    for x in (1, 2):
        for z in (0.5, 1.5, 2.5):
            expected.append({"A.X": x, "B.Y": "c", "C.Z": z})
    assert grid_assignments(params) == expected
    with pytest.raises(ConfigError, match="Grid search"):
        grid_assignments({"A.X": {"min": 0.0, "max": 1.0}})


def test_random_search_is_reproducible_within_bounds_and_extends():
    params = {"T": {"distribution": "q_uniform", "min": 1.0, "max": 10.0, "q": 0.5},
              "W": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1},
              "N": {"min": 1, "max": 4}, "S": {"values": [0, 1, 2]}}
    five = random_assignments(params, 5, seed=3)
    assert five == random_assignments(params, 5, seed=3)
    assert random_assignments(params, 3, seed=3) == five[:3]
    assert five != random_assignments(params, 5, seed=4)
    assert len({json.dumps(a, sort_keys=True) for a in five}) == 5
    for a in five:
        assert 1.0 <= a["T"] <= 10.0 and (a["T"] * 2).is_integer()
        assert 1e-3 <= a["W"] <= 1e-1
        assert isinstance(a["N"], int) and 1 <= a["N"] <= 4
        assert a["S"] in (0, 1, 2)
    with pytest.raises(ConfigError, match="--count"):
        assignments({"method": "random", "parameters": params})
    assert len(assignments({"method": "bayes", "parameters": params, "run_cap": 4})) == 4


def test_both_argument_forms_give_the_same_config(tmp_path):
    params = {"KD.TEMPERATURE": {"values": [2.0]}, "SOLVER.LR_DECAY_STAGES": {"values": [[3, 6]]},
              "KD.LOGIT_STAND": {"values": [True]}, "DISTILLER.TYPE": {"value": "KD"}}
    configs = []
    for form in ("${args_no_hyphens}", "${args}"):
        spec = load_sweep(write_sweep(tmp_path, params, command_args=form))
        command = expand_command(spec, assignments(spec)[0], interpreter="py")
        assert command[:4] == ["py", "tools/train.py", "--cfg", DIGITS_STUDENT]  # ${env} dropped
        prefix = "--" if form == "${args}" else ""
        assert command[4:] == [f"{prefix}KD.TEMPERATURE=2.0", f"{prefix}SOLVER.LR_DECAY_STAGES=[3, 6]",
                               f"{prefix}KD.LOGIT_STAND=True", f"{prefix}DISTILLER.TYPE=KD"]
        configs.append(build_cfg(*train_arguments(command, "tools/train.py")))
    assert configs[0] == configs[1]
    assert configs[0].KD.TEMPERATURE == 2.0 and configs[0].SOLVER.LR_DECAY_STAGES == [3, 6]
    assert configs[0].KD.LOGIT_STAND is True and configs[0].DISTILLER.TYPE == "KD"


def test_seeds_get_their_own_run_directories():
    names = set()
    for seed in range(3):
        opts = ["KD.TEMPERATURE=2.0", f"EXPERIMENT.SEED={seed}", "LOG.PREFIX=/tmp/x", "EXPERIMENT.PROJECT=p"]
        name, _ = experiment_name(build_cfg(DIGITS_STUDENT, opts), opts)
        assert name == os.path.join("p", f"digits,KD.TEMPERATURE:2.0,EXPERIMENT.SEED:{seed}")
        names.add(name)
    assert len(names) == 3


def test_runner_records_a_failing_trial_and_lists_it(tmp_path):
    spec = {"_path": "s.yaml", "metric": {"name": "best_acc", "goal": "maximize"}}
    trial = Trial(0, {"X.Y": 1}, [sys.executable, "-c", "import sys; print('boom'); sys.exit(2)"],
                  str(tmp_path / "p" / "run"), epochs=2)
    runner = SweepRunner(spec, [trial], out_dir=str(tmp_path / "sweep"))
    assert runner.run() == [trial]
    record = json.loads((tmp_path / "sweep" / "records.jsonl").read_text())
    assert record["status"] == "failed" and record["returncode"] == 2 and record["params"] == {"X.Y": 1}
    assert "boom" in (tmp_path / "sweep" / "logs" / "trial_0.log").read_text()
    runner.write_results()
    assert read_csv(str(tmp_path / "sweep" / "results.csv")) == [
        {"trial": "0", "X.Y": "1", "best_acc": "", "best top-1": "", "last top-1": "", "status": "failed", "run": "run"}]


def test_a_run_name_from_many_overrides_stays_one_file_name():
    opts = [f"MODEL.STUDENT_KWARGS.arg{i}={'x' * 20}" for i in range(20)]
    cfg = build_cfg(None, ["EXPERIMENT.TAG=t"])
    name, tags = experiment_name(cfg, opts)
    base = os.path.basename(name)
    full = ",".join(["t"] + [f"MODEL.STUDENT_KWARGS.arg{i}:{'x' * 20}" for i in range(20)])
    assert len(base) == 200 and base.startswith(full[:189] + ",")
    assert base[-10:] == hashlib.sha1(full.encode()).hexdigest()[:10]
    assert len(tags) == 21  # the tags keep every override whole
    other, _ = experiment_name(cfg, opts[:-1] + [f"MODEL.STUDENT_KWARGS.arg19={'y' * 20}"])
    assert other != name  # same start, another run: another directory
