"""Config values a key's type cannot check (mdistiller/config_checks.py): every enumerated key refused
with the closest valid values, every probability / decay / fraction range-checked, and zoo models
taking or refusing MODEL.*_KWARGS / *_FEATURES; each a one-line ConfigError (exit 2 through the tools)."""

import os

import pytest

from conftest import REPO_ROOT, run_tool, run_tool_in_process
from mdistiller.config_checks import InRange, OneOf, check_rules
from mdistiller.engine.build import build_role_model, check_names
from mdistiller.engine.cfg import CFG, RULES, build_cfg
from mdistiller.errors import ConfigError
from mdistiller.models import cifar_models
from mdistiller.registry import did_you_mean

TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits", "student.yaml")


def refusal(*opts: str) -> str:
    with pytest.raises(ConfigError) as refused:
        build_cfg(None, list(opts))
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_did_you_mean_names_the_close_ones_ignoring_case():
    assert did_you_mean("bacth", ["batch", "pair", "elem"]) == " Did you mean batch?"
    assert did_you_mean("sgd", ["SGD", "AdamW"]) == " Did you mean SGD?"
    assert did_you_mean("zzz", ["SGD", "AdamW"]) == ""


def test_in_range_ends_open_and_closed():
    decay = InRange(0.0, 1.0, high_open=True)
    for ok in (0.0, 0.5, 0.9999):
        decay.check("EMA.DECAY", ok)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"^EMA.DECAY must be in \[0.0, 1.0\), got {bad}.$"):
            decay.check("EMA.DECAY", bad)
    with pytest.raises(ConfigError, match=r"^X must be > 0, got 0.$"):
        InRange(0, low_open=True).check("X", 0)


def test_rules_reach_nested_keys_and_skip_absent_sections():
    cfg = CFG.clone()
    cfg.CRD.NCE.MOMENTUM = 2.0
    with pytest.raises(ConfigError, match=r"^CRD.NCE.MOMENTUM must be in \[0.0, 1.0\]"):
        check_rules(cfg.CRD, {"NCE.MOMENTUM": InRange(0.0, 1.0)}, "CRD.")
    check_rules(cfg, {"NOSUCH.KEY": OneOf(("a",))})   # another config's key: nothing to check


@pytest.mark.parametrize("key, value, close", [
    ("MIXUP.MODE", "bacth", "batch"),
    ("SOLVER.TYPE", "adamw", "AdamW"),
    ("SOLVER.LR_SCHEDULER", "cosin", "cosine"),
    ("SOLVER.AMP_DTYPE", "half", None),
    ("DATASET.INTERPOLATION", "bicubc", "bicubic"),
    ("DEIT.TYPE", "sof", "soft"),
    ("DEIT.FUSION", "softmx", "softmax"),
    ("FAMKD.FUSION", "abff", "abf"),
    ("CANKD.AFFINITY", "gausian", "gaussian"),
    ("SPECTRALKD.CONNECTOR", "pol", "pool"),
    ("FREEKD.DIVERSITY", "dic", "dice"),
    ("AFPKD.DIVERSITY", "jacard", "jaccard"),
    ("CRD.MODE", "exakt", "exact"),
])
def test_enumerated_key_is_refused_with_the_closest(key, value, close):
    line = refusal(key, value)
    assert line.startswith(f"{key} '{value}' is not one of ")
    assert (f"Did you mean {close}?" in line) if close else ("Did you mean" not in line)


@pytest.mark.parametrize("key, value", [
    ("EMA.DECAY", "1.5"), ("EMA.DECAY", "1.0"), ("MIXUP.PROB", "3"), ("MIXUP.SWITCH_PROB", "-0.1"),
    ("MIXUP.ALPHA", "-1"), ("DATASET.RANDOM_ERASING", "1.2"), ("DATASET.TRAIN_FRACTION", "0"),
    ("SOLVER.MOMENTUM", "1.0"), ("SOLVER.LABEL_SMOOTHING", "1.0"), ("SOLVER.LR_DECAY_RATE", "0"),
    ("SOLVER.WEIGHT_DECAY", "-1e-4"), ("DEIT.ALPHA", "1.5"), ("FAMKD.CUTON", "2"), ("KD.TEMPERATURE", "0"),
    ("CRD.NCE.MOMENTUM", "1.5"),
])
def test_out_of_range_value_is_refused(key, value):
    assert refusal(key, value).startswith(f"{key} must be ")


def test_values_at_the_closed_ends_are_taken():
    cfg = build_cfg(None, ["EMA.DECAY", "0.0", "MIXUP.PROB", "1.0", "MIXUP.SWITCH_PROB", "0.0",
                           "DATASET.TRAIN_FRACTION", "1.0", "MIXUP.MODE", "elem", "SOLVER.TYPE", "AdamW"])
    assert (cfg.EMA.DECAY, cfg.MIXUP.PROB, cfg.MIXUP.MODE) == (0.0, 1.0, "elem")


def test_every_default_passes_its_rules():
    check_rules(CFG, RULES)
    build_cfg()


def test_dense_config_checks_its_own_choices():
    from mdistiller_dense.config import build_dense_cfg

    with pytest.raises(ConfigError, match=r"^PKD.DOMAIN 'frequncy' is not one of spatial, frequency. "
                                          r"Did you mean frequency\?$"):
        build_dense_cfg(None, ["PKD.DOMAIN", "frequncy"])
    with pytest.raises(ConfigError, match=r"^DATASET.TYPE 'cocoo' is not one of coco, segmentation, sa1b, shapes"):
        build_dense_cfg(None, ["DATASET.TYPE", "cocoo"])
    with pytest.raises(ConfigError, match=r"^MGD.MASK_RATIO must be in \[0.0, 1.0\), got 1.0.$"):
        build_dense_cfg(None, ["MGD.MASK_RATIO", "1.0"])
    with pytest.raises(ConfigError, match=r"^FREEKD.DIVERSITY 'dise' is not one of dice, jaccard. Did you mean dice\?$"):
        build_dense_cfg(None, ["FREEKD.DIVERSITY", "dise"])
    with pytest.raises(ConfigError, match=r"^SOLVER.WARMUP_RATIO must be in \[0.0, 1.0\], got 2.0.$"):
        build_dense_cfg(None, ["SOLVER.WARMUP_RATIO", "2"])
    with pytest.raises(ConfigError, match=r"^SOLVER.TYPE 'sgd' is not one of SGD, AdamW. Did you mean SGD\?$"):
        build_dense_cfg(None, ["SOLVER.TYPE", "sgd"])


def test_resumed_config_overrides_are_checked(tmp_path):
    from mdistiller.cli import saved_cfg

    run = tmp_path / "run"
    run.mkdir()
    (run / "cfg.yaml").write_text(build_cfg().dump())
    with pytest.raises(ConfigError, match=r"^MIXUP.PROB must be in"):
        saved_cfg(str(run / "latest"), ["MIXUP.PROB", "3"])


def test_zoo_model_refuses_kwargs_and_features_it_cannot_take():
    line = str(pytest.raises(ConfigError, check_names, build_cfg(None, [
        "MODEL.STUDENT_KWARGS", "{'drop_path_rate': 0.1}"])).value)
    assert line.startswith("MODEL.STUDENT_KWARGS drop_path_rate: the zoo model resnet32 takes no constructor")
    line = str(pytest.raises(ConfigError, check_names, build_cfg(None, [
        "DISTILLER.TYPE", "KD", "DISTILLER.TEACHER", "resnet32x4", "MODEL.TEACHER_FEATURES", "['layer1']"])).value)
    assert line.startswith("MODEL.TEACHER_FEATURES ['layer1']: the zoo model resnet32x4 gives its own stage outputs")
    line = str(pytest.raises(ConfigError, check_names, build_cfg(None, [
        "MODEL.STUDENT_KWARGS", "{'num_classes': 10}"])).value)
    assert "num_classes" in line and "are the run's" in line


def test_zoo_model_takes_the_kwargs_its_constructor_has(monkeypatch):
    import torch

    name = "width_probe_for_config_checks"   # registered for this test only
    monkeypatch.setitem(cifar_models._items, name, lambda num_classes=100, width=4: torch.nn.Linear(width, num_classes))
    monkeypatch.setitem(cifar_models.checkpoints, name, None)
    cfg = build_cfg(None, ["DISTILLER.STUDENT", name, "MODEL.STUDENT_KWARGS", "{'width': 7}"])
    check_names(cfg)
    model = build_role_model(cfg, "STUDENT", 3)
    assert tuple(model.weight.shape) == (3, 7)
    with pytest.raises(ConfigError, match=rf"^MODEL.STUDENT_KWARGS depth: the zoo model {name} takes width "):
        check_names(build_cfg(None, ["DISTILLER.STUDENT", name, "MODEL.STUDENT_KWARGS", "{'depth': 2}"]))


@pytest.mark.parametrize("opts, line", [
    (["EMA.DECAY", "1.5"], "EMA.DECAY must be in [0.0, 1.0), got 1.5."),
    (["MIXUP.PROB", "3"], "MIXUP.PROB must be in [0.0, 1.0], got 3.0."),
    (["SOLVER.TYPE", "Adam"], "SOLVER.TYPE 'Adam' is not one of SGD, AdamW. Did you mean AdamW?"),
    (["MODEL.STUDENT_FEATURES", "['layer1']"], "MODEL.STUDENT_FEATURES ['layer1']: the zoo model resnet8 gives its"),
    (["MODEL.STUDENT_KWARGS.drop_path_rate", "0.1"], "MODEL.STUDENT_KWARGS drop_path_rate: the zoo model resnet8"),
])
def test_tools_train_refuses_in_one_line_before_writing(tmp_path, opts, line):
    result = run_tool_in_process(TRAIN, "--cfg", DIGITS, f"LOG.PREFIX={tmp_path}", *opts, cwd=str(tmp_path))
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {line}"), result.stderr
    # value checks stop the run before its directory exists; the model checks, as a model's name, before any file
    assert not any(tmp_path.iterdir()) if not opts[0].startswith("MODEL.") else not any(
        path.is_file() for path in tmp_path.rglob("*"))


@pytest.mark.e2e
def test_misspelt_mixup_mode_stops_tools_train_in_one_line(tmp_path):
    result = run_tool(TRAIN, "--cfg", DIGITS, f"LOG.PREFIX={tmp_path}", "MIXUP.MODE", "bacth", cwd=str(tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == ["error: MIXUP.MODE 'bacth' is not one of batch, pair, elem. Did you mean batch?"]
    assert not any(tmp_path.iterdir())
