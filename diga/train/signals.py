"""SIGTERM and Ctrl-C during training: finish the step, checkpoint it, stop cleanly.

``StopOnSignal`` replaces the SIGTERM and SIGINT handlers while a stage trains. The first
signal only records itself; the training loop looks at ``requested`` after each step (under
torchrun every rank agrees on the same step, ``Distributed.any_rank``), writes a checkpoint as
a periodic one and raises ``RunStopped``. A second Ctrl-C more than a second after the first
stops at once (``KeyboardInterrupt``); copies of one Ctrl-C that arrive together (the terminal
signals the whole process group, and torchrun forwards it too) count as one.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from diga.errors import RunStopped

EXIT_CODES = {"SIGTERM": 0, "SIGINT": 130}
REPEAT_S = 1.0  # a second SIGINT within this time is the same Ctrl-C, delivered twice


class StopOnSignal:
    """Context manager: record SIGTERM / SIGINT instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._at = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.requested == "SIGINT" and name == "SIGINT" and now - self._at > REPEAT_S:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        if self.requested is None:
            self.requested, self._at = name, now

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def run_stopped(signal_name: str, stage: str, step: int, steps: int, run_dir: Path) -> RunStopped:
    """The one line a stopped run prints: where its checkpoint is and the command to go on."""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--auto-resume")]
    command = "diga " + " ".join(shlex.quote(a) for a in argv) if argv else f"diga train {stage}"
    if not argv or argv[0] not in ("run", "demo"):  # a job (diga run) continues by itself
        command += " --resume"
    return RunStopped(f"stopped by {signal_name} at step {step}/{steps} of {stage}: checkpoint "
                      f"{Path(run_dir) / 'checkpoints' / 'last'}; go on with: {command}",
                      EXIT_CODES.get(signal_name, 0))
