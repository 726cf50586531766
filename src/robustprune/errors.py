"""Errors that reach the user as one line (the CLI prints ``error: <message>`` and exits non-zero).

Every message says what is wrong *and* how to fix it.
"""


class RobustPruneError(Exception):
    """Base class: an error a user can fix (bad input, missing file, unknown name)."""

    exit_code = 2


class UnknownNameError(RobustPruneError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(RobustPruneError, ValueError):
    """A configuration value out of range or of the wrong kind."""


class DataError(RobustPruneError):
    """Dataset files missing or corrupt."""


class CheckpointError(RobustPruneError):
    """A checkpoint file missing, corrupt or inconsistent with its sidecar."""
