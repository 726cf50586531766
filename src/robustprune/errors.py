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


class OutputPathError(RobustPruneError):
    """An output file or folder that cannot be written (checked before the work starts)."""


class DivergenceError(RobustPruneError):
    """Training diverged: the loss or the weights became non-finite (NaN or infinity) or exploded.

    ``result`` holds the training history up to the divergence (a ``TrainResult``) when raised by ``fit``; the
    model has been restored to the last good (best validation) epoch when there was one (``restored_epoch``).
    """

    def __init__(self, message: str, *, result: object = None, restored_epoch: int | None = None,
                 where: str = "", advice: str = "") -> None:
        super().__init__(message)
        self.result = result
        self.restored_epoch = restored_epoch
        self.where = where
        """When and what: "in epoch 3/10 (step 412): the loss became NaN or infinite (nan)"."""
        self.advice = advice
        """How to avoid it, e.g. a lower learning rate."""


class RobustPruneWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a limit larger than the data, clamped).

    The CLI prints these as one ``warning: ...`` line on stderr.
    """
