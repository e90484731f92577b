"""W&B sweep files, read and expanded without W&B.

A sweep file (``configs/sweeps/*.yaml``) is what ``wandb sweep`` takes: ``program``, ``method``
(grid, random, bayes), ``metric`` (``name``, ``goal``), ``parameters`` (one config key each, e.g.
``KD.TEMPERATURE``) and a ``command`` such as::

    [${env}, ${interpreter}, ${program}, --cfg, configs/cifar100/kd/res32x4_res8x4.yaml,
     LOG.WANDB=True, ${args_no_hyphens}]

This module turns such a file into trials (parameter assignments) and the exact command a wandb
agent would run for each, and checks the file against the config before anything runs: every
parameter a config key, every value of the key's type, every expanded command parsed by
tools/train.py's rules. tools/sweep.py runs the trials (mdistiller/experiments/sweep_runner.py).
"""

import argparse
import itertools
import json
import math
import os
import random
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError

Assignment = Dict[str, Any]

SEARCH_METHODS = ("grid", "random", "bayes")
METRIC_GOALS = ("maximize", "minimize")
# How each wandb distribution draws a value from a random.Random.
CONTINUOUS = ("uniform", "log_uniform", "log_uniform_values", "normal", "log_normal")
QUANTISED = ("q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal", "q_log_normal")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform") + CONTINUOUS + QUANTISED
# The command macros of a wandb agent that an offline run can fill.
ARG_MACROS = ("${args}", "${args_no_hyphens}")


def load_sweep(path: str) -> Dict[str, Any]:
    """The sweep file as a dict, its structure checked (ConfigError naming the problem)."""
    if not os.path.isfile(path):
        raise ConfigError(f"Sweep file not found: {path}. Pass a file of configs/sweeps/.")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"Sweep file {path} is not valid YAML: {str(err).splitlines()[0]}.") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"Sweep file {path} must hold a mapping (program, method, metric, parameters, command).")
    for key in ("program", "method", "metric", "parameters", "command"):
        if key not in spec:
            raise ConfigError(f"Sweep file {path} has no '{key}' entry.")
    if spec["method"] not in SEARCH_METHODS:
        raise ConfigError(f"Sweep file {path}: method must be one of {', '.join(SEARCH_METHODS)}, got {spec['method']!r}.")
    metric = spec["metric"]
    if not isinstance(metric, dict) or "name" not in metric or metric.get("goal", "maximize") not in METRIC_GOALS:
        raise ConfigError(f"Sweep file {path}: metric needs a name and a goal ({' or '.join(METRIC_GOALS)}).")
    if not isinstance(spec["parameters"], dict) or not spec["parameters"]:
        raise ConfigError(f"Sweep file {path}: parameters must map config keys to their values.")
    for key, param in spec["parameters"].items():
        distribution(key, param, path)
    command = spec["command"]
    if not isinstance(command, list) or not any(str(c) in ARG_MACROS for c in command):
        raise ConfigError(f"Sweep file {path}: command must be a list holding ${{args_no_hyphens}} or ${{args}}.")
    spec["_path"] = path
    return spec


def distribution(key: str, param: Any, source: str = "the sweep file") -> str:
    """The wandb distribution of a parameter entry (given, or inferred as wandb does)."""
    if not isinstance(param, dict):
        raise ConfigError(f"Parameter {key} in {source} must be a mapping (value, values or distribution).")
    if "parameters" in param:
        raise ConfigError(f"Parameter {key} in {source}: nested parameters are not supported; use dotted config keys.")
    if "distribution" in param:
        kind = param["distribution"]
    elif "value" in param:
        kind = "constant"
    elif "values" in param:
        kind = "categorical"
    elif "min" in param and "max" in param:
        kind = "int_uniform" if all(isinstance(param[b], int) for b in ("min", "max")) else "uniform"
    else:
        raise ConfigError(f"Parameter {key} in {source} needs value, values, or min and max.")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"Parameter {key} in {source}: distribution {kind!r} is not supported "
                          f"(supported: {', '.join(DISTRIBUTIONS)}).")
    needed = {"constant": ("value",), "categorical": ("values",)}.get(kind, ("mu", "sigma") if "normal" in kind else ("min", "max"))
    needed += ("q",) if kind.startswith("q_") else ()
    missing = [n for n in needed if n not in param]
    if missing:
        raise ConfigError(f"Parameter {key} in {source}: distribution {kind} needs {', '.join(missing)}.")
    if kind == "categorical" and (not isinstance(param["values"], list) or not param["values"]):
        raise ConfigError(f"Parameter {key} in {source}: values must be a non-empty list.")
    return kind


def draw(key: str, param: Dict[str, Any], rng: random.Random) -> Any:
    """One value of a parameter, drawn as wandb's random search does."""
    kind = distribution(key, param)
    if kind == "constant":
        return param["value"]
    if kind == "categorical":
        return rng.choices(param["values"], weights=param.get("probabilities"))[0]
    if kind == "int_uniform":
        return rng.randint(int(param["min"]), int(param["max"]))
    base = kind[2:] if kind.startswith("q_") else kind
    if base == "uniform":
        value = rng.uniform(param["min"], param["max"])
    elif base == "log_uniform":
        value = math.exp(rng.uniform(param["min"], param["max"]))
    elif base == "log_uniform_values":
        value = math.exp(rng.uniform(math.log(param["min"]), math.log(param["max"])))
    elif base == "normal":
        value = rng.gauss(param["mu"], param["sigma"])
    else:  # log_normal
        value = math.exp(rng.gauss(param["mu"], param["sigma"]))
    if kind.startswith("q_"):
        value = round(value / param["q"]) * param["q"]
        if float(param["q"]).is_integer() and not isinstance(param["q"], float):
            value = int(value)
    return value


def grid_assignments(parameters: Dict[str, Any]) -> List[Assignment]:
    """Every combination of the parameters' values, the last parameter varying fastest."""
    axes = []
    for key, param in parameters.items():
        kind = distribution(key, param)
        if kind not in ("constant", "categorical"):
            raise ConfigError(f"Grid search needs value or values for every parameter; {key} has distribution {kind}.")
        axes.append([param["value"]] if kind == "constant" else list(param["values"]))
    return [dict(zip(parameters, combo)) for combo in itertools.product(*axes)]


def random_assignments(parameters: Dict[str, Any], count: int, seed: int = 0) -> List[Assignment]:
    """`count` distinct assignments; the i-th depends only on (seed, i), so a larger count extends a sweep."""
    found: List[Assignment] = []
    seen = set()
    for attempt in range(count * 20):
        rng = random.Random(f"{seed}:{attempt}")
        assignment = {key: draw(key, param, rng) for key, param in parameters.items()}
        key = assignment_key(assignment)
        if key not in seen:
            seen.add(key)
            found.append(assignment)
            if len(found) == count:
                break
    return found


def assignments(spec: Dict[str, Any], count: Optional[int] = None, seed: int = 0) -> List[Assignment]:
    """The trials of a sweep: the grid (its first `count`), or `count` random draws.

    Bayesian search needs the W&B server's model of past runs; offline it runs as random search.
    Random search takes `count`, else the file's `run_cap`.
    """
    if spec["method"] == "grid":
        grid = grid_assignments(spec["parameters"])
        return grid[:count] if count else grid
    count = count or spec.get("run_cap")
    if not count:
        raise ConfigError(f"{spec['method']} search of {spec.get('_path', 'the sweep')} runs until stopped: "
                          "pass --count N (or set run_cap in the file).")
    return random_assignments(spec["parameters"], count, seed)


def assignment_key(assignment: Assignment) -> str:
    """A canonical text of an assignment (what identifies a trial when a sweep resumes)."""
    return json.dumps(assignment, sort_keys=True, default=str)


def expand_command(spec: Dict[str, Any], assignment: Assignment, interpreter: str = sys.executable) -> List[str]:
    """The command a wandb agent runs for `assignment`, with `${interpreter}` = `interpreter`.

    Values are written as the agent writes them (`f"{key}={value}"`); `${env}` is dropped (the
    agent's `/usr/bin/env`), `${envvar:NAME}` takes the environment variable.
    """
    macros = {
        "${env}": [],
        "${interpreter}": [interpreter],
        "${program}": [spec["program"]],
        "${args}": [f"--{k}={v}" for k, v in assignment.items()],
        "${args_no_hyphens}": [f"{k}={v}" for k, v in assignment.items()],
    }
    command: List[str] = []
    for item in spec["command"]:
        item = str(item)
        if item in macros:
            command += macros[item]
        elif item.startswith("${envvar:") and item.endswith("}"):
            command.append(os.environ.get(item[len("${envvar:"):-1], ""))
        elif item.startswith("${"):
            raise ConfigError(f"Sweep command macro {item} is not supported offline; use ${{args_no_hyphens}}.")
        else:
            command.append(item)
    return command


def train_arguments(command: Sequence[str], program: str) -> Tuple[str, List[str]]:
    """(config file, overrides) of a tools/train.py command, parsed as train.py parses its argv."""
    command = list(command)
    if program not in command:
        raise ConfigError(f"Sweep command does not run its program {program}.")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cfg", default="")
    args, opts = parser.parse_known_args(command[command.index(program) + 1:])
    if not args.cfg:
        raise ConfigError("Sweep command has no --cfg FILE for tools/train.py.")
    return args.cfg, opts


def config_key_default(cfg: CN, key: str) -> Any:
    """The value of a dotted key in `cfg` (ConfigError when the key does not exist)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            raise ConfigError(f"Sweep parameter {key} is not a config key.")
        node = node[part]
    return node


def _check_kind_type(key: str, kind: str, param: Dict[str, Any], default: Any) -> None:
    """A sampled distribution must produce values the key's type takes without rounding."""
    if kind in ("constant", "categorical"):
        return
    integral = kind == "int_uniform" or (kind.startswith("q_") and isinstance(param["q"], int))
    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    if not numeric_default or (isinstance(default, int) and not integral):
        raise ConfigError(f"Sweep parameter {key}: distribution {kind} draws "
                          f"{'integers' if integral else 'real numbers'}, but the key holds "
                          f"{type(default).__name__} (default {default!r}).")


def candidate_values(key: str, param: Dict[str, Any]) -> List[Any]:
    """Values to try a parameter with: its values, or its bounds and a few draws."""
    kind = distribution(key, param)
    if kind == "constant":
        return [param["value"]]
    if kind == "categorical":
        return list(param["values"])
    return [draw(key, param, random.Random(i)) for i in range(3)]


def check_sweep(spec: Dict[str, Any], max_commands: int = 64) -> None:
    """Check a sweep file against the config; ConfigError naming the first problem.

    Every parameter is a config key of the run's config (method sections included, so a
    parameter of an unregistered method fails); every value has the key's type; every command
    (the first `max_commands` trials) parses into a config whose DISTILLER.TYPE is registered.
    """
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine.cfg import build_cfg

    path = spec.get("_path", "the sweep file")
    trials = assignments(spec, count=None if spec["method"] == "grid" else 4)
    cfg_file, base_opts = train_arguments(expand_command(spec, trials[0]), spec["program"])
    fixed = [o for o in base_opts if not any(o.lstrip("-").startswith(f"{k}=") for k in spec["parameters"])]
    base = build_cfg(cfg_file, fixed)
    for key, param in spec["parameters"].items():
        try:
            default = config_key_default(base, key)
        except ConfigError:
            default = None  # reported below with the closest valid keys
        if default is not None:
            _check_kind_type(key, distribution(key, param), param, default)
        for value in candidate_values(key, param):
            try:
                built = config_key_default(build_cfg(cfg_file, fixed + [f"{key}={value}"]), key)
            except ConfigError as err:
                raise ConfigError(f"{path}: parameter {key} = {value!r}: {err}") from None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and built != value:
                raise ConfigError(f"{path}: parameter {key} = {value!r} becomes {built!r} in the config.")
    for assignment in trials[:max_commands]:
        command = expand_command(spec, assignment)
        cfg = build_cfg(*train_arguments(command, spec["program"]))
        if cfg.DISTILLER.TYPE not in distiller_dict:
            raise ConfigError(f"{path}: DISTILLER.TYPE {cfg.DISTILLER.TYPE} is not a registered distiller.")
