"""``diga demo``: the whole pipeline on the built-in benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diga.cli.common import Overrides, console


def demo_command(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option("--out", help="Demo folder.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="A smoke run of every step (~2 min).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted demo.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Source-only, DiGA warm-up and self-training (2 rounds) on the built-in benchmark, then
    ONNX + INT8 export and a latency benchmark, with a report.

    About 10 minutes on a laptop CPU; --quick runs every step in about two minutes.

    Examples:
      diga demo --out runs/demo
      diga demo --quick
    """
    from diga.demo import run_demo

    result = run_demo(out, quick=quick, overrides=list(overrides or []), resume=resume,
                      say=lambda m: console.print(m, highlight=False, markup=False),
                      show_progress=not quiet)
    table = Table(title="DiGA on the built-in benchmark (target val)")
    table.add_column("stage")
    table.add_column("mIoU", justify="right")
    for stage, miou in result.miou.items():
        table.add_row(stage, f"{miou:.2f}")
    console.print(table)
    bench = Table(title="final model, CPU latency at batch 1")
    for col in ("model", "backend", "precision", "p50 ms", "mIoU"):
        bench.add_column(col, justify="right" if col in ("p50 ms", "mIoU") else "left")
    for row in result.bench:
        bench.add_row(Path(row["model"]).name, row["backend"], row["precision"],
                      f"{row['latency_ms']['p50']:.2f}",
                      "-" if row["miou"] is None else f"{row['miou']:.2f}")
    console.print(bench)
    console.print(f"report: {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
