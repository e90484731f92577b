"""Config assembly: strict merge of YAML and the command line, every override form, every error."""

import pytest

from mdistiller.engine.cfg import CFG, build_cfg, dump_cfg, load_cfg_text, parse_overrides
from mdistiller.errors import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_match_mdistiller():
    assert CFG.SOLVER.LR_DECAY_STAGES == [150, 180, 210]
    assert CFG.KD.TEMPERATURE == 4 and CFG.KD.LOSS.CE_WEIGHT == 0.1 and CFG.KD.LOSS.KD_WEIGHT == 0.9
    assert CFG.SOLVER.DOT.DELTA == 0.075
    assert CFG.LOG.PREFIX == "./output" and CFG.LOG.SAVE_CHECKPOINT_FREQ == 40


@pytest.mark.parametrize(
    "opts",
    [
        ["SOLVER.LR", "0.2", "KD.TEMPERATURE", "2"],
        ["SOLVER.LR=0.2", "KD.TEMPERATURE=2"],
        ["--SOLVER.LR=0.2", "--KD.TEMPERATURE=2"],
        ["SOLVER.LR=0.2", "--KD.TEMPERATURE=2"],
    ],
)
def test_every_override_form(opts):
    cfg = build_cfg(None, opts)
    assert cfg.SOLVER.LR == 0.2
    assert cfg.KD.TEMPERATURE == 2.0 and isinstance(cfg.KD.TEMPERATURE, float)


def test_override_values_are_typed():
    cfg = build_cfg(None, ["SOLVER.LR_DECAY_STAGES=[10, 20]", "LOG.WANDB", "true", "EXPERIMENT.NAME", "123",
                           "DISTILLER.TEACHER_WEIGHTS=out/x/student_best"])
    assert cfg.SOLVER.LR_DECAY_STAGES == [10, 20]
    assert cfg.LOG.WANDB is True
    assert cfg.EXPERIMENT.NAME == "123"
    assert cfg.DISTILLER.TEACHER_WEIGHTS == "out/x/student_best"


def test_yaml_then_command_line(tmp_path):
    path = write(tmp_path, "a.yaml", "SOLVER:\n  LR: 0.01\n  EPOCHS: 3\nDISTILLER:\n  TYPE: KD\n")
    cfg = build_cfg(path, ["SOLVER.EPOCHS", "5"])
    assert (cfg.SOLVER.LR, cfg.SOLVER.EPOCHS, cfg.DISTILLER.TYPE) == (0.01, 5, "KD")
    assert cfg.is_frozen()


def test_base_file_is_merged_first(tmp_path):
    write(tmp_path, "base.yaml", "SOLVER:\n  LR: 0.01\n  EPOCHS: 3\n")
    path = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  EPOCHS: 7\n")
    cfg = build_cfg(path)
    assert (cfg.SOLVER.LR, cfg.SOLVER.EPOCHS) == (0.01, 7)


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'SOLVER.LRR'.*SOLVER.LR"):
        build_cfg(None, ["SOLVER.LRR", "0.1"])
    path = write(tmp_path, "bad.yaml", "KD:\n  TEMPRATURE: 2\n")
    with pytest.raises(ConfigError, match=r"KD.TEMPRATURE.*bad.yaml.*KD.TEMPERATURE"):
        build_cfg(path)


def test_suggested_keys_are_settable():
    """A section name ('SOLVER') is never suggested: only keys that hold a value can be set."""
    with pytest.raises(ConfigError) as info:
        build_cfg(None, ["SOLVER.LRR", "0.1"])
    suggested = str(info.value).split("closest valid keys: ")[1].rstrip(".").split(", ")
    cfg = build_cfg(None, [])
    for key in suggested:
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert not isinstance(node, dict), key


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match=r"SOLVER.EPOCHS.*expects int"):
        build_cfg(None, ["SOLVER.EPOCHS", "many"])
    with pytest.raises(ConfigError, match=r"SOLVER.EPOCHS.*expects int"):
        build_cfg(None, ["SOLVER.EPOCHS", "2.5"])
    with pytest.raises(ConfigError, match=r"LOG.WANDB.*expects bool"):
        build_cfg(None, ["LOG.WANDB", "1"])


def test_missing_file_and_value():
    with pytest.raises(ConfigError, match="Config file not found: nowhere.yaml"):
        build_cfg("nowhere.yaml")
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["SOLVER.LR"])


def test_saved_yaml_round_trip():
    cfg = build_cfg(None, ["SOLVER.LR=0.3", "DISTILLER.TYPE=KD", "SOLVER.LR_DECAY_STAGES=[5]"])
    assert load_cfg_text(dump_cfg(cfg)) == cfg
