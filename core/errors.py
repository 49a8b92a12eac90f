"""What a user can get wrong, as one family of exceptions: the command line catches `UserError` alone.

Each carries the exit code its command ends with and a message meant for the user as it is (one
line: what went wrong, where, and what to do). Anything that is not a `UserError` is a bug.
"""

from __future__ import annotations

import signal
from pathlib import Path


class UserError(Exception):
    """A fault the user can fix; `exit_code` is what the command returns."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad option or config file."""


class DataError(UserError, ValueError):
    """A problem with the training data."""


class TemplateError(UserError):
    """The model's chat template cannot be used for training as it is."""


class ModelLoadError(UserError):
    """The model could not be found or loaded; the message says what to pass instead."""


class CheckpointError(UserError):
    """A checkpoint could not be written or read, or the output directory belongs to another run."""

    exit_code = 1


class TrainingStopped(UserError):
    """The run ended before its last step; the message says why, and `checkpoint` where to resume from."""

    def __init__(self, message: str, checkpoint: Path | None = None, exit_code: int = 1):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.exit_code = exit_code


class StoppedAtOnce(BaseException):
    """A second signal: leave now. BaseException, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class Interrupted(KeyboardInterrupt):
    """SIGTERM outside training, raised where SIGINT raises KeyboardInterrupt, so that both unwind the same way
    (temporary files removed on the way out) and end in one line."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def first_line(err: BaseException) -> str:
    """An exception's message, first line only (library errors can run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
