"""``diga eval``: per-class IoU and mIoU on the target validation split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from diga.cli.common import Overrides, console, runtime_warnings


def eval_command(
    model: Annotated[Path, typer.Argument(help="A run directory or checkpoint folder.")],
    overrides: Overrides = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", help="Write Cityscapes labelId PNGs (for the official evaluator).")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Evaluate the EMA teacher.")] = False,
    native_size: Annotated[bool, typer.Option(
        "--native-size", help="For an .onnx / .engine: run each image at its own size instead "
        "of the model's trained scale.")] = False,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Class protocols to score, from one pass: 19, 16, 13, e.g. "
        "--classes 16,13 (default: data.classes). A 19-class model is scored on 16 or 13 by "
        "class name.", show_default=False)] = None,
) -> None:
    """Evaluate a trained model on the target validation split of its config.

    Overrides change the data (e.g. data.target.root=/data/cityscapes) or the test
    (eval.scales=[1.0,0.5] eval.flip=true). With --classes (or data.classes) another protocol
    than the model's, the model is scored by class name: on a subset of its classes, a
    prediction of a class outside the protocol is a miss and labels of those classes are
    ignored (as cityscapesscripts does); a model with fewer classes than the data is scored on
    its own. Other class lists are refused.

    Examples:
      diga eval runs/warmup --classes 19,16,13 --json runs/warmup/eval.json
      diga eval runs/selftrain/round2/export/model.int8.onnx
    """
    from diga.protocols import parse_protocols
    from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

    requested = parse_protocols(classes)
    if model.suffix.lower() in MODEL_FILE_SUFFIXES:  # the runtime: no torch needed
        return _evaluate_file(model, overrides or [], json_path, native_size, requested)
    from diga.checkpoint import load_model
    from diga.config import saved_config_with
    from diga.data.datasets import build_dataset
    from diga.device import select_device
    from diga.errors import UserError
    from diga.io import atomic_write_json
    from diga.protocols import label_protocol, model_classes, plan_scoring
    from diga.train.evaluate import evaluate

    net, saved, ckpt = load_model(model, "cpu")
    cfg = saved_config_with(saved, overrides, "run config")
    labels = label_protocol(cfg.data.target.kind, cfg.num_classes)
    scoring = plan_scoring(model_classes(saved.num_classes), labels, requested, cfg.num_classes,
                           f"{ckpt.folder}")
    _notes(scoring.notes)
    device = select_device(cfg.run.device)
    if teacher:
        state = ckpt.teacher()
        if state is None:
            raise UserError(f"{ckpt.folder} has no teacher weights", "evaluate without --teacher")
        net.load_state_dict(state)
    net.to(device)
    dataset = build_dataset(cfg, "target", "val", train=False, scales=cfg.eval.scales,
                            classes=labels.num_classes)
    if not dataset.has_labels:
        raise UserError(f"the target val split at {cfg.data.target.root} has no labels",
                        "evaluation needs gtFine labelIds (Cityscapes) or labels/ (folder)")
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        metrics = evaluate(net, dataset, cfg, device, save_predictions=save_predictions,
                           progress=lambda i, n: bar.update(task, completed=i), scoring=scoring)
    resize = cfg.data.target.resize
    protocol = {"scales": list(cfg.eval.scales), "flip": cfg.eval.flip,
                "run_size": f"{resize[0]}x{resize[1]}" if resize else "each image's own size"}
    result = {"model": str(ckpt.folder), "stage": ckpt.meta.get("stage"), "step": ckpt.step,
              "weights": "teacher" if teacher else "student", "images": len(dataset),
              "protocol": protocol, **metrics.as_dict()}
    _print_all(result, f"target val: {cfg.data.target.kind} ({len(dataset)} images)")
    views = " + ".join(f"{s:g}x" for s in cfg.eval.scales)
    console.print(f"test: {views} of {protocol['run_size']}{', flipped too' if cfg.eval.flip else ''}"
                  + ("; single scale: 1x, as the exported model runs" if "single_scale" in result
                     else ""), highlight=False)
    if json_path is not None:
        atomic_write_json(json_path, result)
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


def _notes(notes: tuple[str, ...] | list[str]) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


def _print_all(result: dict, title: str) -> None:
    """One table per scored protocol."""
    for metrics in (result.get("class_protocols") or {"": result}).values():
        mapped = (f", mapped from the model's {metrics['mapped_from']}"
                  if metrics.get("mapped_from") else "")
        _print(metrics, f"{title}, {metrics['classes']} classes{mapped}")


def _print(result: dict, title: str) -> None:
    console.print(title, highlight=False, soft_wrap=True)  # above the table: it never wraps
    table = Table()
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in result["iou"].items():
        table.add_row(name, "-" if iou is None or math.isnan(iou) else f"{iou:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU[/]", f"[bold]{result['miou']:.2f}[/]")
    if "miou13" in result:
        table.add_row("mIoU* (13 of these 16)", f"{result['miou13']:.2f}")
    single = result.get("single_scale")
    if single:  # a multi-scale / flip test: what the deployed model (one scale) gets
        table.add_row("mIoU single scale", f"{single['miou']:.2f}")
        if "miou13" in single:
            table.add_row("mIoU* single scale", f"{single['miou13']:.2f}")
    table.add_row("pixel acc", f"{result['pixel_acc']:.2f}")
    console.print(table)


def _evaluate_file(path: Path, overrides: list[str], json_path: Path | None,
                   native_size: bool, requested: list[int]) -> None:
    """An exported .onnx / .engine through the runtime, on its run's target val split: images at
    their own size in, as an app gives them; the runtime resizes them to the trained scale."""
    from rich.progress import Progress

    from diga.checkpoint import config_for_model
    from diga.errors import UserError
    from diga.export.parity import evaluate_model_file, target_images
    from diga.io import atomic_write_json

    if not path.is_file():
        raise UserError(f"model not found: {path}", "check the path of the exported file")
    cfg = config_for_model(path, overrides)
    images = target_images(cfg, "val", None, finest=True)
    if not images.has_labels:
        raise UserError(f"the target val split at {cfg.data.target.root} has no labels",
                        "evaluation needs gtFine labelIds (Cityscapes) or labels/ (folder)")
    backend = "cpu" if cfg.run.device == "cpu" else "auto"
    with runtime_warnings(), Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(images))
        result = evaluate_model_file(path, images, requested, cfg.num_classes, backend,
                                     "native" if native_size else "trained",
                                     progress=lambda i, n: bar.update(task, completed=i))
    _notes(result.pop("notes"))
    result = {"model": str(path), "backend": result.pop("runs"), **result}
    _print_all(result, f"target val: {cfg.data.target.kind} ({len(images)} images), "
               f"{result['backend']}")
    if json_path is not None:
        atomic_write_json(json_path, result)
