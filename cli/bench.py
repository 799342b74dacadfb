"""``diga bench``: latency, throughput, memory, mIoU and parity per (model, backend); training speed.

One command, two forms: ``diga bench MODEL... [key=value ...]`` benches models, and
``diga bench train [CONFIG] [key=value ...]`` times training steps. A Typer group cannot take a
variadic MODEL list next to a sub-command, so the first argument ``train`` selects the training
harness (a run directory named ``train`` is given as ``./train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from diga.cli.common import console, err_console, split_config_args
from diga.errors import UserError
from diga.export.formats import BENCH_BACKENDS
from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

STAGES = ("source", "warmup", "selftrain")
# the help's lists, from the tables bench runs on, so that they stay true
BACKEND_NAMES = ", ".join(BENCH_BACKENDS)
MODEL_FILES = ", ".join(MODEL_FILE_SUFFIXES)


def bench_command(
    args: Annotated[list[str] | None, typer.Argument(
        help=f"MODEL... (run directories, checkpoint folders, model files: {MODEL_FILES}) then "
        "key.sub=value overrides; or: train CONFIG key.sub=value... for training throughput.",
        show_default=False)] = None,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", "-b", help=f"Only these backends (repeat): {BACKEND_NAMES}. Default: "
        "every backend each model file can run on.",
        show_default=False)] = None,
    batch: Annotated[list[int] | None, typer.Option(
        "--batch", min=1, help="Throughput at these batch sizes (repeat; default "
        "bench.batch_sizes). Latency is always at batch 1.", show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result as JSON here.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write bench.json, bench.md and latency.png here (default: <run>/bench "
        "when a MODEL is a run directory).", show_default=False)] = None,
    min_miou: Annotated[float | None, typer.Option(
        "--min-miou", help="Exit with code 1 when a row's target-val mIoU (%) is below this "
        "(rows without labels do not count).", show_default=False)] = None,
    compile: Annotated[bool, typer.Option(
        "--compile", help="Add a torch.compile row next to each eager PyTorch row.")] = False,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", help="Seconds per timed loop (default bench.time_budget_s).",
        show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, help="bench train: timed steps per stage (default 20).",
        show_default=False)] = None,
    stage: Annotated[list[str] | None, typer.Option(
        "--stage", help="bench train: only these stages (repeat): source, warmup, selftrain.",
        show_default=False)] = None,
) -> None:
    """Benchmark models per backend, or training throughput with 'diga bench train'.

    diga bench MODEL...: one row per (model file, backend): end-to-end latency
    (a target frame at its own size in, labels at that size out) mean, p50,
    p90, p99 after warm-up over a time budget, and the same work in parts
    (host pre, model call, host post); throughput at the --batch sizes; peak
    memory; FLOPs and GFLOP/s of the model call; target-val mIoU (as 'diga
    eval' computes it) and pixel agreement with the fp32 PyTorch model. A run directory expands to its checkpoint (torch) and
    the files in RUN/export. Backends that cannot run here are rows with the
    reason. Overrides set the data (data.target.root=...) and bench.* knobs
    (warmup, time_budget_s, batch_sizes, input_size, max_images, ...).

    diga bench train CONFIG: step time and images/s of the source, warm-up and
    self-training steps, each against the bare network passes it needs, and
    data-loading throughput. CONFIG defaults to the demo preset. (To bench a
    run directory named train, write ./train.)

    Examples:
      diga bench runs/selftrain --batch 1 --batch 8 --min-miou 30
      diga bench runs/demo/export/model.int8.onnx -b ort-cpu --json int8.json
      diga bench train demo train.batch_size=4 --steps 10
    """
    items = list(args or [])
    if items and items[0] == "train":
        unused = {"--backend": backend, "--batch": batch, "--out": out, "--min-miou": min_miou,
                  "--compile": compile or None, "--time-budget": time_budget}
        _reject(unused, "diga bench MODEL...")
        return _bench_train(items[1:], steps or 20, stage or list(STAGES), json_path)
    _reject({"--steps": steps, "--stage": stage}, "diga bench train")
    models, overrides = _split_models(items)
    if batch:
        overrides.append(f"bench.batch_sizes=[{','.join(map(str, batch))}]")
    if time_budget is not None:
        overrides.append(f"bench.time_budget_s={time_budget}")
    _bench_models(models, overrides, backend, json_path, out, min_miou, compile)


def _reject(options: dict[str, object], belongs_to: str) -> None:
    given = [name for name, value in options.items() if value]
    if given:
        raise UserError(f"{given[0]} is an option of '{belongs_to}'",
                        "diga bench MODEL... takes --backend/--batch/--out/--min-miou/--compile/"
                        "--time-budget; diga bench train takes --steps/--stage")


def _split_models(items: list[str]) -> tuple[list[Path], list[str]]:
    """``MODEL... key=value...`` -> (models, overrides)."""
    cut = next((i for i, item in enumerate(items) if "=" in item), len(items))
    models, overrides = [Path(m) for m in items[:cut]], items[cut:]
    stray = [o for o in overrides if "=" not in o]
    if stray:
        raise UserError(f"unexpected argument '{stray[0]}' after the overrides",
                        "give every MODEL first, then key.sub=value overrides")
    if not models:
        raise UserError("no MODEL to bench",
                        "give a run directory, a checkpoint folder, an .onnx, an .xml or an .engine")
    return models, overrides


def default_report_dir(models: list[Path]) -> Path | None:
    """``<run>/bench`` for the first MODEL that is a run directory (not a checkpoint folder),
    or a file of a run's ``export`` folder (``diga bench runs/selftrain/export/model.onnx``)."""
    from diga.checkpoint import META_FILE

    for model in models:
        if model.is_dir() and not (model / META_FILE).is_file():
            return model / "bench"
        if model.is_file() and model.parent.name == "export":
            return model.parent.parent / "bench"
    return None


def _bench_models(models: list[Path], overrides: list[str], backends: list[str] | None,
                  json_path: Path | None, out: Path | None, min_miou: float | None,
                  compile: bool) -> None:
    from diga.benchmarks.latency import rows_below_miou, run_bench
    from diga.benchmarks.report import print_table, report_paths, short_model, write_reports
    from diga.io import atomic_write_json

    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file", "choose a folder with --out")
    with console.status("benchmarking") as status:
        result = run_bench(models, overrides, backends, compile,
                           say=lambda msg: status.update(escape(msg)))
    report_dir = out or default_report_dir(models)
    full_table = (f"{report_paths(report_dir)['markdown']} and bench.json" if report_dir is not None
                  else str(json_path) if json_path is not None else None)
    print_table(result, console, full_table)  # the columns that fit; the reports have them all
    if report_dir is not None:
        paths = write_reports(result, report_dir)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False)
    if json_path is not None:
        atomic_write_json(json_path, result)
        console.print(f"wrote {json_path}", highlight=False)
    if min_miou is None:
        return
    if not any(r["miou"] is not None for r in result["rows"]):
        err_console.print(f"[yellow]warning:[/] no row has an mIoU (no labels, or no row ran): "
                          f"--min-miou {min_miou} checked nothing", highlight=False)
        return
    below = rows_below_miou(result["rows"], min_miou)
    if below:
        first = below[0]
        more = f" (and {len(below) - 1} more rows)" if len(below) > 1 else ""
        raise UserError(f"{short_model(first)} on {first['backend']} ({first['precision']}): "
                        f"target-val mIoU {first['miou']:.2f} is below --min-miou {min_miou}{more}",
                        "see the table above; lower the bar or improve the model")


def _bench_train(args: list[str], steps: int, stages: list[str], json_path: Path | None) -> None:
    from diga.benchmarks.training import format_training, measure_training
    from diga.config import load_config
    from diga.io import atomic_write_json

    for name in stages:
        if name not in STAGES:
            raise UserError(f"unknown stage '{name}' (--stage)", f"choose from: {', '.join(STAGES)}")
    config, overrides = split_config_args(args)
    cfg = load_config(config, overrides)
    with console.status(f"timing {', '.join(stages)} steps ({steps} each)"):
        result = measure_training(cfg, steps, tuple(dict.fromkeys(stages)))
    console.print(format_training(result), highlight=False)
    if json_path is not None:
        atomic_write_json(json_path, result)
        console.print(f"wrote {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench", no_args_is_help=True)(bench_command)
