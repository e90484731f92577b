"""Errors a user can cause. Each carries the fix in its message.

The tools catch :class:`UserError`, print its message on one line and exit with status 2.
"""


class UserError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class ConfigError(UserError):
    """Unknown config key, wrong value type, or missing / unreadable config file."""


class UnknownNameError(UserError, KeyError):
    """A model, distiller, dataset or trainer name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(UserError):
    """A dataset directory or file that is not where the config says it is."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt, unsafe or of another architecture."""


class NonFiniteLossError(UserError):
    """A loss term that became NaN or inf during training."""


class OutputDirError(UserError):
    """An output directory that cannot be created or written."""
