"""``diga run`` and ``diga demo``: the whole pipeline as one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from diga.cli.common import ConfigArgs, Devices, Quiet, console

STAGE_HELP = "source, warmup, selftrain, eval, export, bench, report"


def run_command(
    args: ConfigArgs = None,
    out: Annotated[Path, typer.Option("--out", help="The job's folder: every stage in a "
                                      "folder of its own; the same --out continues the job.")]
    = Path("runs/job"),
    until: Annotated[str | None, typer.Option(
        "--until", help=f"Stop after this stage ({STAGE_HELP}).", show_default=False)] = None,
    start: Annotated[str | None, typer.Option(
        "--from", help="Start at this stage: the stages it needs must have finished; finished "
        "eval, export, bench and report stages from here on are done again.",
        show_default=False)] = None,
    int8: Annotated[bool | None, typer.Option(
        "--int8/--no-int8", help="Export INT8 (default: pipeline.export).",
        show_default=False)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also export fp16.")] = False,
    openvino: Annotated[bool, typer.Option("--openvino", help="Also export OpenVINO IRs.")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT engines (GPU).")] = False,
    devices: Devices = None,
    quiet: Quiet = False,
) -> None:
    """The whole job: warm-up, self-training rounds, evaluation, export, benchmark, report.

    Each stage writes a folder of --out. Running the same command again continues the job:
    finished stages are skipped, an interrupted one resumes from its checkpoint, and a changed
    config is refused with the keys that differ. So a scheduler script that requeues the one
    command carries the paper schedule through preemptions (SIGTERM checkpoints and exits 0).

    Examples:
      diga run demo --out runs/job
      diga run gta2cs-deeplabv2 data.source.root=/data/GTA5 \\
        data.target.root=/data/cityscapes --out runs/gta --devices 8
      diga run gta2cs-deeplabv2 --out runs/gta --until warmup
      diga run gta2cs-deeplabv2 --out runs/gta --from export --openvino
    """
    from diga.cli.common import split_config_args
    from diga.config import load_config
    from diga.pipeline import Options, run_pipeline

    config, overrides = split_config_args(args)
    cfg = load_config(config, overrides)
    export = None
    if int8 is not None or fp16 or openvino or trt:
        export = [n for n, on in (("int8", int8 if int8 is not None else
                                   "int8" in cfg.pipeline.export),
                                  ("fp16", fp16), ("openvino", openvino), ("trt", trt)) if on]
    options = Options(until=until, start=start, devices=devices, quiet=quiet, export=export,
                      config_name=config or "demo", title="diga run")
    result = run_pipeline(cfg, out, options, say=_say)
    show(result)


def demo_command(
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key.sub=value config overrides.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Demo folder; the same --out continues an "
                                      "interrupted demo.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="A smoke run of every step (~2 min).")] = False,
    quiet: Quiet = False,
) -> None:
    """Source-only, DiGA warm-up and self-training (2 rounds) on the built-in benchmark, then
    evaluation, ONNX + INT8 export and a latency benchmark, with a report: diga run on the
    demo preset.

    About 10 minutes on a laptop CPU; --quick runs every step in about two minutes. Running
    the same command again continues an interrupted demo.

    Examples:
      diga demo --out runs/demo
      diga demo --quick
    """
    from diga.demo import run_demo

    result = run_demo(out, quick=quick, overrides=list(overrides or []), say=_say,
                      show_progress=not quiet)
    show(result)


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False)


def show(result) -> None:  # noqa: ANN001  (diga.pipeline.PipelineResult, imported lazily)
    """The per-stage mIoU and bench tables, and where the report is."""
    if result.miou:
        table = Table(title="target-val mIoU per stage")
        table.add_column("stage")
        table.add_column("mIoU", justify="right")
        for stage, miou in result.miou.items():
            table.add_row(stage, "-" if miou is None else f"{miou:.2f}")
        console.print(table)
    if result.bench:
        bench = Table(title="final model: frame in, labels out, batch 1")
        for col in ("model", "backend", "precision", "p50 ms", "mIoU"):
            bench.add_column(col, justify="right" if col in ("p50 ms", "mIoU") else "left")
        for row in result.bench:
            bench.add_row(Path(row["model"]).name, row["backend"], row["precision"],
                          f"{row['latency_ms']['p50']:.2f}",
                          "-" if row["miou"] is None else f"{row['miou']:.2f}")
        console.print(bench)
    report = result.out / "report.md"
    if report.is_file():
        console.print(f"report: {escape(str(report))}", highlight=False)
    if (result.out / "export" / "model.onnx").is_file():
        console.print(f"next: diga predict {escape(str(result.out / 'export' / 'model.onnx'))} "
                      "photos/ --out predictions/", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("demo")(demo_command)
