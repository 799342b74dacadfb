"""Pieces every verb shares: the console, overrides, device choice, error lines."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from diga.errors import UserError

if TYPE_CHECKING:  # the config schema imports the models: not at CLI start-up
    from diga.config import Config

console = Console()
err_console = Console(stderr=True)

# CONFIG and key=value overrides share one variadic argument: the first item is CONFIG when it
# has no '='. ``split_config_args`` separates them.
ConfigArgs = Annotated[
    list[str] | None,
    typer.Argument(
        help="CONFIG (a YAML file or a preset: demo, gta2cs-deeplabv2, synthia2cs-deeplabv2; "
        "default demo) followed by key.sub=value overrides.",
        show_default=False,
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="key.sub=value config overrides, e.g. data.target.root=/data/cs",
                   show_default=False),
]


Devices = Annotated[
    int | None,
    typer.Option("--devices", min=1, help="Run on N devices of this node: starts torchrun with N "
                 "processes (one per GPU; CPU processes with gloo where there is no GPU). For "
                 "several nodes run torchrun yourself (docs: Training, Scale out).", show_default=False),
]


Out = Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<stage>, "
                                          "runs/<stage>-2, ... never overwriting a run).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last "
                                      "checkpoint (its saved config + any overrides).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def stage_config(args: list[str] | None, out: Path | None, resume: bool) -> Config:
    """The config of a training command: CONFIG + overrides, or with ``--resume`` the run's
    saved config + overrides."""
    from diga.config import load_config

    config, overrides = split_config_args(args)
    if resume:
        from diga.train.stages import run_config

        if out is None:
            raise UserError("--resume needs the run directory", "pass --out RUN_DIR")
        from diga.config import saved_config_with

        return saved_config_with(run_config(out), overrides, "run config")
    return load_config(config, overrides)


def launch_on_devices(devices: int, run, args: list[str], max_restarts: int = 0) -> None:
    """Run ``diga ARGS`` under torchrun with ``devices`` processes on this node.

    SIGTERM and Ctrl-C sent to this process go to the training processes, which finish their
    step, checkpoint it and exit as a single process does (exit code 0 / 130 here too).

    Args:
        run: the ``RunConfig`` the processes will use (device kind, GPU count check).
        max_restarts: torchrun restarts every process up to this many times after one fails;
            ``args`` must then resume (``--auto-resume``).
    """
    import signal
    import subprocess

    from diga.train.distributed import check_devices, torchrun_command
    from diga.train.signals import EXIT_CODES

    where = check_devices(devices, run)
    err_console.print(f"torchrun: {where}" + (f", up to {max_restarts} restarts" if max_restarts
                                               else ""), highlight=False)
    # the workers leave the job's status.json to this process (diga.status)
    proc = subprocess.Popen(torchrun_command(devices, args, max_restarts),
                            env={**os.environ, "DIGA_NO_STATUS": "1"})
    received: list[str] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        for pid in child_pids(proc.pid) or [proc.pid]:  # the workers, so torchrun ends cleanly
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:  # the workers checkpointed and said where
        raise typer.Exit(EXIT_CODES.get(received[0], 0) if code == 0 else code)
    if code != 0:
        raise UserError(f"the run on {where} failed (torchrun exit code {code})",
                        "the failing rank's error is printed above")


def child_pids(pid: int) -> list[int]:
    """A process's child pids (Linux /proc), [] where they cannot be read."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def split_config_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """``["demo", "train.steps=5"]`` -> ``("demo", ["train.steps=5"])``."""
    args = list(args or [])
    if args and "=" not in args[0]:
        config, rest = args[0], args[1:]
    else:
        config, rest = None, args
    stray = [a for a in rest if "=" not in a]
    if stray:
        raise UserError(f"unexpected argument '{stray[0]}'",
                        "give CONFIG first, then key.sub=value overrides")
    return config, rest


def print_error(exc: Exception) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def runtime_warnings() -> Iterator[None]:
    """The runtime's warnings (an older file without inference size, a GPU fallback) as lines."""
    import warnings

    from rich.markup import escape

    from diga.runtime import SegmenterWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SegmenterWarning)
        yield
    for w in caught:
        if issubclass(w.category, SegmenterWarning):
            err_console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False,
                              soft_wrap=True)
