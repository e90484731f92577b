"""Config keys whose values the models determine (channels, spatial sizes).

MDistiller asks for them in the config (e.g. `REVIEWKD.IN_CHANNELS`, `CRD.FEAT.STUDENT_DIM`); here
they are measured by a probe forward. A key left at its default takes the measured value; a key set
to anything else must agree with it, so an MDistiller YAML file runs unchanged and a wrong value
fails with the right one in the message.
"""

from typing import Any

from yacs.config import CfgNode as CN

from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import method_defaults
from mdistiller.errors import ConfigError


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def measured(cfg: CN, key: str, value: Any) -> Any:
    """`value` (measured), after checking the config's `key` (e.g. "REVIEWKD.IN_CHANNELS")."""
    section, *path = key.split(".")
    configured, default = cfg[section], method_defaults[section]
    for part in path:
        configured, default = configured[part], default[part]
    if _plain(configured) != _plain(default) and _plain(configured) != _plain(value):
        raise ConfigError(
            f"{key} is {_plain(configured)} but {cfg.DISTILLER.STUDENT} / {cfg.DISTILLER.TEACHER} at "
            f"DATASET.IMAGE_SIZE {image_size(cfg)} give {_plain(value)}: remove the key "
            f"(it is measured) or set it to {_plain(value)}."
        )
    return value
