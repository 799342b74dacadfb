"""``diga eval``: per-class IoU and mIoU on the target validation split, or on several labelled
datasets with a row each and their mean (domain generalisation)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from diga.cli.common import Overrides, console, runtime_warnings
from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

MODEL_FILES = ", ".join(MODEL_FILE_SUFFIXES)  # what the runtime scores, without torch

if TYPE_CHECKING:  # the schema imports nothing heavy, but the CLI starts without it
    from diga.config import Config


def eval_command(
    model: Annotated[Path, typer.Argument(
        help=f"A run directory, a checkpoint folder or a model file ({MODEL_FILES}).")],
    overrides: Overrides = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", help="Write Cityscapes labelId PNGs (for the official evaluator); "
        "with several targets, in a folder per target.")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Evaluate the EMA teacher.")] = False,
    native_size: Annotated[bool, typer.Option(
        "--native-size", help="For a model file: run each image at its own size instead "
        "of the model's trained scale.")] = False,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Class protocols to score, from one pass: 19, 16, 13, e.g. "
        "--classes 16,13 (default: data.classes). A 19-class model is scored on 16 or 13 by "
        "class name.", show_default=False)] = None,
    targets: Annotated[list[str] | None, typer.Option(
        "--target", help="A labelled dataset to score, a row each and their mean (repeat the "
        "option): KIND:ROOT or NAME=KIND:ROOT, then optionally ,resize=HxW (the run size, the "
        "1x scale of eval.scales; default each image's own size) and ,val_split=SPLIT. KIND: "
        "cityscapes, bdd100k, mapillary, gta5, synthia, folder or builtin. Replaces "
        "eval.targets.", show_default=False)] = None,
) -> None:
    """Evaluate a trained model on the target validation split of its config, or on several
    labelled datasets (--target or eval.targets) with a row each and their mean.

    Overrides change the data (e.g. data.target.root=/data/cityscapes) or the test
    (eval.scales=[1.0,0.5] eval.flip=true). With --classes (or data.classes) another protocol
    than the model's, the model is scored by class name: on a subset of its classes, a
    prediction of a class outside the protocol is a miss and labels of those classes are
    ignored (as cityscapesscripts does); a model with fewer classes than the data is scored on
    its own. Other class lists are refused.

    Several targets (domain generalisation): each is scored as data.target would be, at its
    own resize, with the run's eval.scales and eval.flip; then one table of the targets' mIoU
    and their mean. The paper's protocol runs each dataset at half its size with scales 2 and
    1, as in the last example.

    Examples:
      diga eval runs/warmup --classes 19,16,13 --json runs/warmup/eval.json
      diga eval runs/selftrain/export/model.int8.onnx
      diga eval runs/dg eval.scales=[2.0,1.0] --json dg.json \\
        --target cityscapes:/data/cityscapes,resize=512x1024 \\
        --target bdd100k:/data/bdd100k,resize=360x640 \\
        --target mapillary:/data/mapillary,resize=540x960
    """
    from diga.protocols import parse_protocols

    requested = parse_protocols(classes)
    if model.suffix.lower() in MODEL_FILE_SUFFIXES:  # the runtime: no torch needed
        return _evaluate_file(model, overrides or [], json_path, native_size, requested, targets)
    from diga.checkpoint import load_model
    from diga.config import saved_config_with
    from diga.data.targets import eval_targets
    from diga.device import select_device
    from diga.errors import UserError

    net, saved, ckpt = load_model(model, "cpu")
    cfg = saved_config_with(saved, overrides, "run config")
    runs = eval_targets(cfg, targets)
    device = select_device(cfg.run.device)
    if teacher:
        state = ckpt.teacher()
        if state is None:
            raise UserError(f"{ckpt.folder} has no teacher weights", "evaluate without --teacher")
        net.load_state_dict(state)
    net.to(device)
    head = {"model": str(ckpt.folder), "stage": ckpt.meta.get("stage"), "step": ckpt.step,
            "weights": "teacher" if teacher else "student"}
    if not runs:
        scored, notes = _score_checkpoint(net, saved.num_classes, cfg, requested,
                                          str(ckpt.folder), device, save_predictions)
        result = {**head, **scored}
        _notes(notes)
        _print_all(result, f"target val: {cfg.data.target.kind} ({result['images']} images)")
        _print_test(result, cfg, result["protocol"]["run_size"])
        _write(json_path, result, save_predictions)
        _next_export(model)
        return
    results, notes = {}, []
    for name, target_cfg in runs:
        out = save_predictions / name if save_predictions is not None else None
        results[name], more = _score_checkpoint(net, saved.num_classes, target_cfg, requested,
                                                str(ckpt.folder), device, out, name)
        notes += more
    _notes(list(dict.fromkeys(notes)))
    _print_targets(results)
    _print_test(next(iter(results.values())), cfg, "each target's run size")
    _write(json_path, _multi(head, results), save_predictions)
    _next_export(model)


def _next_export(model: Path) -> None:
    """After scoring a checkpoint: what deploys it."""
    console.print(f"next: diga export {model} --int8", highlight=False, markup=False,
                  soft_wrap=True)


def _score_checkpoint(net: Any, saved_classes: int, cfg: Config, requested: list[int],
                      where: str, device: Any, save_predictions: Path | None,
                      name: str | None = None) -> tuple[dict, list[str]]:
    """Metrics of a loaded model (its checkpoint config's ``data.classes``: ``saved_classes``)
    on ``cfg``'s target val split, with its kind, root and the protocol of the test; and the
    scoring's notes."""
    from rich.progress import Progress

    from diga.data.datasets import build_dataset
    from diga.data.targets import run_size
    from diga.errors import UserError
    from diga.protocols import label_protocol, model_classes, plan_scoring
    from diga.train.evaluate import evaluate

    labels = label_protocol(cfg.data.target.kind, cfg.num_classes)
    scoring = plan_scoring(model_classes(saved_classes), labels, requested, cfg.num_classes,
                           where)
    dataset = build_dataset(cfg, "target", "val", train=False, scales=cfg.eval.scales,
                            classes=labels.num_classes)
    if not dataset.has_labels:
        raise UserError(f"the target val split at {cfg.data.target.root} has no labels",
                        "evaluation needs gtFine labelIds (Cityscapes) or labels/ (folder)")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"evaluating {name or ''}".strip(), total=len(dataset))
        metrics = evaluate(net, dataset, cfg, device, save_predictions=save_predictions,
                           progress=lambda i, n: bar.update(task, completed=i), scoring=scoring)
    protocol = {"scales": list(cfg.eval.scales), "flip": cfg.eval.flip,
                "run_size": run_size(cfg.data.target.resize)}
    result = {**_where(cfg), "images": len(dataset), "protocol": protocol, **metrics.as_dict()}
    return result, list(scoring.notes)


def _where(cfg: Config) -> dict:
    root = cfg.data.target.root
    return {"kind": cfg.data.target.kind, "root": str(root) if root else None}


def _print_test(result: dict, cfg: Config, run_size: str) -> None:
    views = " + ".join(f"{s:g}x" for s in cfg.eval.scales)
    console.print(f"test: {views} of {run_size}{', flipped too' if cfg.eval.flip else ''}"
                  + ("; single scale: 1x, as the exported model runs" if "single_scale" in result
                     else ""), highlight=False)


def _write(json_path: Path | None, result: dict, save_predictions: Path | None) -> None:
    from diga.io import atomic_write_json

    if json_path is not None:
        atomic_write_json(json_path, result)
        console.print(f"wrote {json_path}", highlight=False, markup=False)
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


def _multi(head: dict, results: dict) -> dict:
    from diga.data.targets import summarise

    return {**head, "targets": results, **summarise(results)}


def _print_targets(results: dict) -> None:
    """Each target's tables, then one row per target and their mean."""
    from diga.data.targets import summarise

    for name, result in results.items():
        extra = f", {result['backend']}" if "backend" in result else ""
        _print_all(result, f"{name}: {result['kind']} val ({result['images']} images, "
                   f"{result['protocol']['run_size']}{extra})")
    first = next(iter(results.values()))
    protocols = list(first.get("class_protocols") or {})
    single = all("single_scale" in r for r in results.values())
    table = Table(title="mIoU per target")
    for column in ("target", "kind", "images", "run size"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for n in protocols or [str(first["classes"])]:
        table.add_column(f"mIoU ({n})" if protocols else "mIoU", justify="right")
    if single:
        table.add_column("mIoU 1x", justify="right")

    def cells(r: dict) -> list[str]:
        values = ([r["class_protocols"][n]["miou"] for n in protocols] if protocols
                  else [r["miou"]])
        return [_num(v) for v in values] + ([_num(r["single_scale"]["miou"])] if single else [])

    for name, r in results.items():
        table.add_row(escape(name), r["kind"], str(r["images"]), r["protocol"]["run_size"],
                      *cells(r))
    table.add_section()
    mean = summarise(results)
    values = ([mean["mean_miou_by_classes"][n] for n in protocols] if protocols
              else [mean["mean_miou"]])
    table.add_row("[bold]mean[/]", "", "", "", *[f"[bold]{_num(v)}[/]" for v in values],
                  *([_num(mean["mean_single_scale_miou"])] if single else []))
    console.print(table)


def _num(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


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
                   native_size: bool, requested: list[int], targets: list[str] | None) -> None:
    """An exported .onnx / .engine through the runtime, on its run's target val split (or on
    each target): images at their own size in, as an app gives them; the runtime resizes them
    to the trained scale (a target's own resize, with several)."""
    from diga.checkpoint import config_for_model
    from diga.data.targets import eval_targets
    from diga.errors import UserError

    if not path.is_file():
        raise UserError(f"model not found: {path}", "check the path of the exported file")
    cfg = config_for_model(path, overrides)
    runs = eval_targets(cfg, targets)
    if not runs:
        scored, notes = _score_file(path, cfg, requested, "native" if native_size else "trained")
        result = {"model": str(path), **scored}
        _notes(notes)
        _print_all(result, f"target val: {cfg.data.target.kind} ({result['images']} images), "
                   f"{result['backend']}")
        _write(json_path, result, None)
        return
    results, notes = {}, []
    for name, target_cfg in runs:
        resize = target_cfg.data.target.resize
        size = "native" if native_size or resize is None else tuple(resize)
        results[name], more = _score_file(path, target_cfg, requested, size, name)
        notes += more
    _notes(list(dict.fromkeys(notes)))
    _print_targets(results)
    _write(json_path, _multi({"model": str(path)}, results), None)


def _score_file(path: Path, cfg: Config, requested: list[int], size: str | tuple[int, int],
                name: str | None = None) -> tuple[dict, list[str]]:
    """Metrics of a model file on ``cfg``'s target val split through the runtime at ``size``
    (``trained``, ``native`` or an (H, W)), and the scoring's notes."""
    from rich.progress import Progress

    from diga.errors import UserError
    from diga.export.parity import evaluate_model_file, target_images

    images = target_images(cfg, "val", None, finest=True)
    if not images.has_labels:
        raise UserError(f"the target val split at {cfg.data.target.root} has no labels",
                        "evaluation needs gtFine labelIds (Cityscapes) or labels/ (folder)")
    backend = "cpu" if cfg.run.device == "cpu" else "auto"
    with runtime_warnings(), Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"evaluating {name or ''}".strip(), total=len(images))
        result = evaluate_model_file(path, images, requested, cfg.num_classes, backend, size,
                                     progress=lambda i, n: bar.update(task, completed=i))
    notes = result.pop("notes")
    protocol = {"run_size": (f"{size[0]}x{size[1]}" if isinstance(size, tuple) else
                             "each image's own size" if size == "native" else "trained scale")}
    return {**_where(cfg), "backend": result.pop("runs"), "protocol": protocol, **result}, notes
