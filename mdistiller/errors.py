"""Errors a user can cause. Each carries the fix in its message.

The tools catch :class:`UserError`, print its message on one line and exit with status 2.
:class:`TrainingStopped` is not an error: a run stopped on request (SIGINT, SIGTERM) after saving.
"""

import re

# How torch's DataLoader re-raises an exception from a worker: "Caught X in DataLoader worker
# process N.\nOriginal Traceback (most recent call last): ...\nmodule.X: <message>".
WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class UserError(Exception):
    """Base class of every error caused by user input rather than by a bug."""

    def __str__(self) -> str:
        text = super().__str__()
        if WORKER_TRACEBACK.match(text):  # keep the worker's own one-line message, not its traceback
            text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        return text


class ConfigError(UserError):
    """Unknown config key, wrong value type, or missing / unreadable config file."""


class UnknownNameError(UserError, KeyError):
    """A model, distiller, dataset or trainer name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(UserError):
    """A dataset directory or file that is not where the config says it is."""


class UnreadableImageError(UserError):
    """An image file of a dataset that cannot be decoded (with DATASET.SKIP_UNREADABLE False)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt, unsafe or of another architecture."""


class NonFiniteLossError(UserError):
    """A loss term that became NaN or inf during training."""


class OutputDirError(UserError):
    """An output directory that cannot be created or written."""


class TrainingStopped(Exception):
    """Training stopped cleanly on a signal after saving `latest`; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class IncompatibleModelError(UserError):
    """A method that cannot run on the given model (a feature the architecture does not have)."""
