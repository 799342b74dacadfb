"""``diga runs [FOLDER]``: the jobs under a folder and their state; ``diga runs plot RUN...``:
their curves in one PNG.

A Typer group cannot take an optional FOLDER next to a sub-command (click reads ``plot`` as
the FOLDER), so ``runs`` is a group whose default command is ``list``: any first argument
that is not a command name goes to ``list`` (a folder named ``plot`` is given as ``./plot``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from diga.cli.common import console

if TYPE_CHECKING:
    from diga.runs import RunRow

STATE_STYLES = {"running": "cyan", "finished": "green", "stopped": "yellow", "crashed": "red"}


class RunsGroup(TyperGroup):
    """``diga runs ARGS``: ``list`` unless the first argument names a command (or asks for
    help), so ``diga runs``, ``diga runs FOLDER`` and ``diga runs --json`` list jobs."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201  (typer vendors its click)
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):  # noqa: ANN001, ANN201
        return ["[FOLDER] [--json] | plot RUN... [--out PNG]"]


app = typer.Typer(cls=RunsGroup, no_args_is_help=False, add_completion=False)


@app.callback()
def runs_group() -> None:
    """The jobs under a folder with their stage, step, state, loss, mIoU, elapsed time and
    ETA; or, with 'diga runs plot', their curves in one PNG. Every training job writes a
    status.json in its folder; a job marked running whose process is gone from this host
    reads crashed.

    Examples:
      diga runs
      diga runs runs/ablations --json
      diga runs plot runs/a runs/b --out curves.png
    """


@app.command("list")
def list_command(
    folder: Annotated[Path, typer.Argument(
        metavar="FOLDER", help="Folder searched for jobs, sub-folders included.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """A table of the jobs under FOLDER (the default command: 'diga runs FOLDER' is 'diga runs
    list FOLDER'). Stopped and crashed jobs' reasons follow the table.

    Examples:
      diga runs
      diga runs runs/ablations --json
      diga runs list runs/ablations
    """
    from diga.runs import find_runs

    rows = find_runs(folder)
    if as_json:
        typer.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    if not rows:
        console.print(f"no runs in {escape(str(folder))}", highlight=False)
        return
    console.print(runs_table(rows, console.width))
    for row in rows:
        if row.error and row.state in ("stopped", "crashed"):
            console.print(f"[{STATE_STYLES[row.state]}]{escape(row.name)}:[/] {escape(row.error)}",
                          highlight=False)


def duration(seconds: float | None) -> str:
    """``3725`` -> ``1:02:05``."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


NUMBERS = ("step", "state", "loss", "mIoU", "elapsed", "ETA")
GAP = 2  # a column's right padding and the rule's blank separator
MIN_TEXT = 10  # below this a text column says little: the config column goes first


def shorten(text: str, width: int, keep_end: bool = False) -> str:
    """``text`` in ``width`` characters: an ellipsis at the end, or at the start where the end
    tells rows apart (a job's path)."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1:] if keep_end else text[:width - 1] + "…"


def short_stage(stage: str, width: int) -> str:
    """``selftrain round 12`` as ``selftrain r12`` where the full name does not fit: the round
    is what tells rows apart."""
    if len(stage) > width and stage.startswith("selftrain round "):
        stage = "selftrain r" + stage.removeprefix("selftrain round ")
    return shorten(stage, width)


def fill(naturals: list[int], budget: int) -> list[int]:
    """Widths for text columns sharing ``budget``, in order of importance: each gets up to
    ``MIN_TEXT``, then what is left goes to the first ones first, up to their natural width."""
    widths = [min(n, MIN_TEXT) for n in naturals]
    left = budget - sum(widths)
    for i, natural in enumerate(naturals):
        more = max(0, min(natural - widths[i], left))
        widths[i], left = widths[i] + more, left - more
    return widths


def runs_table(rows: list[RunRow], width: int) -> Table:
    """The rows as a table of at most ``width`` columns: the numbers whole, the name, stage and
    config (by importance) shortened to what is left, the config left out where too little
    is, and columns with nothing in them (ETA while nothing runs) left out."""
    columns = {"name": [r.name for r in rows], "config": [config_name(r.config) for r in rows],
               "stage": [r.stage or "-" for r in rows], "step": [step_text(r) for r in rows],
               "state": [r.state for r in rows],
               "loss": ["-" if r.loss is None else f"{r.loss:.3f}" for r in rows],
               "mIoU": ["-" if r.miou is None else f"{r.miou:.1f}" for r in rows],
               "elapsed": [duration(r.elapsed_s) for r in rows],
               "ETA": [duration(r.eta_s) for r in rows]}
    columns = {k: v for k, v in columns.items()
               if k in ("name", "stage", "step", "state") or any(x != "-" for x in v)}
    natural = {k: max(len(k), *map(len, v)) for k, v in columns.items()}
    text = [k for k in ("name", "stage", "config") if k in columns]
    budget = width - sum(n for k, n in natural.items() if k not in text) - GAP * (len(columns) - 1)
    if "config" in text and sum(natural[k] for k in text) > budget and budget < MIN_TEXT * 3:
        text.remove("config")
        del columns["config"]
        budget += GAP
    widths = dict(zip(text, fill([natural[k] for k in text], budget), strict=True))
    columns["name"] = [shorten(x, widths["name"], keep_end=True) for x in columns["name"]]
    columns["stage"] = [short_stage(x, widths["stage"]) for x in columns["stage"]]
    if "config" in columns:
        columns["config"] = [shorten(x, widths["config"]) for x in columns["config"]]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    for key in columns:
        table.add_column(key, no_wrap=True, overflow="ellipsis", max_width=widths.get(key),
                         justify="left" if key in (*text, "state") else "right")
    for i, row in enumerate(rows):
        table.add_row(*(f"[{STATE_STYLES.get(row.state, 'dim')}]{v[i]}[/]" if key == "state"
                        else escape(v[i]) for key, v in columns.items()))
    return table


def config_name(config: str | None) -> str:
    """A preset as named, a YAML file by its file name."""
    if not config:
        return "-"
    return Path(config).name if config.endswith((".yaml", ".yml")) else config


def step_text(row: RunRow) -> str:
    if row.step is None and row.steps is None:
        return "-"
    return f"{'-' if row.step is None else row.step}/{'?' if row.steps is None else row.steps}"


@app.command("plot")
def plot_command(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN", help="Job folders, or folders of jobs.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", help="PNG to write (default RUN/curves.png for one job, runs-curves.png in "
        "this folder for several).", show_default=False)] = None,
) -> None:
    """The curves of one or more jobs in one PNG: train loss, learning rate, the share of
    pseudo-labels kept (self-training) and target-val mIoU, a colour per job, its stages one
    after the other on one step axis with a dotted line where each starts.

    Examples:
      diga runs plot runs/gta
      diga runs plot runs/a runs/b --out curves.png
    """
    from diga.runs import plot_runs, resolve_runs

    found = resolve_runs(runs)
    if out is None:
        out = found[0][1].folder / "curves.png" if len(found) == 1 else Path("runs-curves.png")
    plot_runs(found, out)
    console.print(f"wrote {escape(str(out))}", highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runs")
