"""Errors that are the user's to fix.

Library code raises ``UserError`` with what is wrong, where, and how to fix it; only the CLI
turns it into one printed line and exit code 1.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A mistake in the user's input (config, paths, files), with a hint on how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        if hint is None and message.startswith("Caught UserError"):
            # re-raised by a DataLoader worker with the worker's traceback: keep the last line
            last = message.strip().splitlines()[-1]
            message = last.split("UserError: ", 1)[-1]
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class RunStopped(Exception):
    """A run stopped on a signal after writing a checkpoint at the step it reached: the CLI
    prints ``message`` as one line and exits with ``code`` (0 for SIGTERM, which schedulers
    expect of a job that saved its state; 130 for Ctrl-C)."""

    def __init__(self, message: str, code: int) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


def import_optional(name: str, message: str, hint: str) -> ModuleType:
    """The optional package ``name`` (an extra: PyAV, OpenVINO, TensorRT), or one
    ``UserError`` line saying what needs it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(message, hint) from None
