"""Checks on config values that a key's type cannot express: a value that must be one of a fixed set
(an optimizer, a schedule, a mixing mode, a method's variant) and a number that must lie in a range
(a probability, a decay, a fraction).

A table of rules maps dotted keys to :class:`OneOf` / :class:`InRange`; :func:`check_rules` applies
one to a config after it is merged, so a misspelt or out-of-range value stops the run before any
data is read, in one :class:`~mdistiller.errors.ConfigError` line that names the key, what it takes
and, for a misspelt choice, the closest valid ones (the registries' ``did you mean``).
"""

from typing import Any, Iterable, Mapping, Optional, Union

from yacs.config import CfgNode as CN

from mdistiller.errors import ConfigError
from mdistiller.registry import did_you_mean

__all__ = ["InRange", "OneOf", "Rule", "Rules", "check_rules", "fraction", "non_negative", "positive",
           "probability"]


class OneOf:
    """A value out of `choices`: a tuple, or any iterable of names read when checked (a registry, so
    names registered by plugins count)."""

    def __init__(self, choices: Iterable[str]) -> None:
        self.choices = choices

    def check(self, key: str, value: Any) -> None:
        known = [str(choice) for choice in self.choices]
        if str(value) not in known:
            raise ConfigError(f"{key} '{value}' is not one of {', '.join(known)}.{did_you_mean(str(value), known)}")


class InRange:
    """A number between `low` and `high` (None: unbounded), each end closed unless named open."""

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
                 high_open: bool = False) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def check(self, key: str, value: Any) -> None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key} must be {'in ' if self.high is not None else ''}{self}, got {value}.")


Rule = Union[OneOf, InRange]
Rules = Mapping[str, Rule]

probability = InRange(0.0, 1.0)
fraction = InRange(0.0, 1.0, low_open=True)   # a share that keeps something: (0, 1]
non_negative = InRange(0.0)
positive = InRange(0.0, low_open=True)


def check_rules(cfg: CN, rules: Rules, prefix: str = "") -> None:
    """Apply each rule of `rules` (keys relative to `cfg`, written ``prefix + key`` in messages) to
    the value `cfg` holds; a key `cfg` lacks is skipped (a section of another config)."""
    for key, rule in rules.items():
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, CN) or part not in node:
                break
            node = node[part]
        else:
            rule.check(prefix + key, node)
