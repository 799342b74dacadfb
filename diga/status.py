"""``<job>/status.json``: what a job is doing, for ``diga runs`` and for people reading a folder.

A job (one ``diga train <stage>``, a self-training with its rounds, a whole ``diga run``)
lists its stages up front, marks each running / finished / skipped as it goes and, on the way
out, finished, stopped (a signal, checkpointed) or crashed (an exception, its line kept). The
file is replaced atomically a handful of times per job, never per step: the step, the loss and
the speed are read from the stages' ``metrics.jsonl`` instead. A ``kill -9`` or a power cut
leaves ``running`` behind; the reader (``diga.runs``) sees that the process is gone.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from diga.errors import RunStopped, UserError
from diga.io import atomic_write_json

FORMAT = "diga-status/1"
STATUS_FILE = "status.json"
DONE = ("finished", "skipped")  # stage states an attempt after an interrupted one keeps
ERROR_CHARS = 500  # a crash's line, cut: a message can carry a whole tensor


@dataclass
class StageInfo:
    """One stage of a job.

    Attributes:
        name: what the table shows, e.g. ``selftrain round 1``.
        dir: its folder relative to the job folder (``.`` when it trains in the job folder).
        steps: training steps; None for stages that do not train (eval, export, bench).
        axis_start: where its step 0 lies on the job's one step axis; None for a training
            stage puts it after the training stages before it.
        state: pending, running, finished, skipped, or (the stage a job ended in) stopped or
            crashed.
    """

    name: str
    dir: str = "."
    steps: int | None = None
    axis_start: int | None = None
    state: str = "pending"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, ``diga`` in place of the script path (a console script or
    ``python -m diga.cli.app``)."""
    return shlex.join(["diga", *(sys.argv if argv is None else argv)[1:]])


def status_enabled() -> bool:
    """False in torchrun ranks other than 0 and in workers a diga launcher started (it writes the
    job's file itself): one writer per job."""
    rank = os.environ.get("RANK")
    return (rank is None or rank == "0") and os.environ.get("DIGA_NO_STATUS") != "1"


def one_line(exc: BaseException) -> str:
    """Why a job ended, as one line."""
    if isinstance(exc, (UserError, RunStopped)):
        text = exc.message
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted (Ctrl-C)"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


def end_of(exc: BaseException | None) -> tuple[str, str | None]:
    """The job's end state and error line for how its ``with`` block ended.

    ``typer.Exit`` inside a job is how ``launch_on_devices`` passes on a signal its torchrun
    workers stopped on (they checkpointed, said where, and exited 0 for SIGTERM, 130 for
    Ctrl-C): stopped, whatever the code says; another code is a failure after the signal.
    ``SystemExit`` is ``sys.exit``: 0 finished, 130 stopped, other codes crashed.
    """
    if exc is None:
        return "finished", None
    if isinstance(exc, (RunStopped, KeyboardInterrupt)):
        return "stopped", one_line(exc)
    code = _typer_exit_code(exc)
    if code is not None:
        if code in (0, 130):
            return "stopped", f"stopped by a signal (exit code {code}); the training processes " \
                              "checkpointed"
        return "crashed", f"exit code {code}"
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return {0: ("finished", None), 130: ("stopped", "interrupted (Ctrl-C)")}.get(
            code, ("crashed", f"exit code {code}"))
    return "crashed", one_line(exc)


def _typer_exit_code(exc: BaseException) -> int | None:
    try:
        from typer import Exit  # it vendors its click: not click.exceptions.Exit
    except ImportError:  # an install without the CLI raises no typer.Exit
        return None
    return exc.exit_code if isinstance(exc, Exit) else None


def read_status(folder: Path) -> dict[str, Any] | None:
    """``<folder>/status.json`` as written, or None when missing, unreadable or another format."""
    try:
        status = json.loads((Path(folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("format") == FORMAT else None


class JobStatus:
    """Context manager that keeps ``<folder>/status.json`` up to date for one job.

    Example::

        stages = [StageInfo("warmup", "warmup", 60), StageInfo("selftrain round 1",
                  "selftrain/round1", 40), StageInfo("export", "export")]
        with JobStatus(out, "gta2cs-deeplabv2", stages) as status:
            status.begin("warmup"); ...; status.finish("warmup")

    A job started again in the same folder (``--resume``) keeps the earlier attempt's
    ``started`` (elapsed counts the whole job) and its finished and skipped stages. Where
    ``status_enabled()`` is False (torchrun ranks > 0, launched workers) nothing is written.
    """

    def __init__(self, folder: Path, config_name: str | None,
                 stages: list[StageInfo] | list[dict[str, Any]], command: str | None = None) -> None:
        self.folder = Path(folder)
        self.enabled = status_enabled()
        self.stages = [s if isinstance(s, StageInfo) else StageInfo(**s) for s in stages]
        axis = 0
        for stage in self.stages:  # training stages follow each other on the job's axis
            if stage.steps is not None:
                stage.axis_start = axis if stage.axis_start is None else stage.axis_start
                axis = stage.axis_start + stage.steps
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        self.data: dict[str, Any] = {
            "format": FORMAT, "command": command or command_line(), "config": config_name,
            "state": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "started": None, "updated": None, "ended": None, "error": None, "stage": None,
            "stages": []}

    @property
    def path(self) -> Path:
        return self.folder / STATUS_FILE

    def __enter__(self) -> JobStatus:
        now = time.time()
        self.data["started"] = now
        earlier = read_status(self.folder) if self.enabled else None
        if earlier is not None:  # an interrupted attempt of this job
            if isinstance(earlier.get("started"), (int, float)):
                self.data["started"] = earlier["started"]
            done = {s.get("name"): s.get("state") for s in earlier.get("stages", [])
                    if isinstance(s, dict) and s.get("state") in DONE}
            for stage in self.stages:
                stage.state = done.get(stage.name, stage.state)
        self._write()
        return self

    def begin(self, name: str) -> None:
        """``name`` runs now: it is the job's current stage."""
        self._stage(name).state = "running"
        self.data["stage"] = name
        self._write()

    def finish(self, name: str) -> None:
        self._stage(name).state = "finished"
        self.data["stage"] = name
        self._write()

    def skip(self, name: str) -> None:
        """``name`` was done by an earlier attempt."""
        self._stage(name).state = "skipped"
        self.data["stage"] = name
        self._write()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        state, error = end_of(exc)
        for stage in self.stages:
            if stage.state == "running":  # the stage it ended in ends with it
                stage.state = "finished" if state == "finished" else state
        self.data.update(state=state, error=error, ended=time.time())
        try:
            self._write()
        except (OSError, UserError):  # a full disk: the job's own error is the one to see
            if exc is None:
                raise
        # returning None re-raises the job's exception

    def _stage(self, name: str) -> StageInfo:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in this job: {[s.name for s in self.stages]}")

    def _write(self) -> None:
        if not self.enabled:
            return
        self.data["updated"] = time.time()
        self.data["stages"] = [asdict(s) for s in self.stages]
        atomic_write_json(self.path, self.data)
