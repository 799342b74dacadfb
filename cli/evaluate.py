"""``diga eval``: per-class IoU and mIoU on the target validation split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from diga.cli.common import Overrides, console


def eval_command(
    model: Annotated[Path, typer.Argument(help="A run directory or checkpoint folder.")],
    overrides: Overrides = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", help="Write Cityscapes labelId PNGs (for the official evaluator).")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Evaluate the EMA teacher.")] = False,
) -> None:
    """Evaluate a trained model on the target validation split of its config.

    Overrides change the data (e.g. data.target.root=/data/cityscapes) or the test
    (eval.scales=[1.0,0.5] eval.flip=true).

    Example: diga eval runs/warmup --json runs/warmup/eval.json
    """
    from diga.checkpoint import load_model
    from diga.cli.train import load_config_from
    from diga.data.datasets import build_dataset
    from diga.device import select_device
    from diga.errors import UserError
    from diga.io import atomic_write_json
    from diga.train.evaluate import evaluate

    if model.suffix.lower() in (".onnx", ".engine"):
        return _evaluate_file(model, overrides or [], json_path)
    net, cfg, ckpt = load_model(model, "cpu")
    cfg = load_config_from(cfg, overrides or [])
    device = select_device(cfg.run.device)
    if teacher:
        state = ckpt.teacher()
        if state is None:
            raise UserError(f"{ckpt.folder} has no teacher weights", "evaluate without --teacher")
        net.load_state_dict(state)
    net.to(device)
    dataset = build_dataset(cfg, "target", "val", train=False)
    if not dataset.has_labels:
        raise UserError(f"the target val split at {cfg.data.target.root} has no labels",
                        "evaluation needs gtFine labelIds (Cityscapes) or labels/ (folder)")
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        metrics = evaluate(net, dataset, cfg, device, save_predictions=save_predictions,
                           progress=lambda i, n: bar.update(task, completed=i))
    result = {"model": str(ckpt.folder), "stage": ckpt.meta.get("stage"), "step": ckpt.step,
              "weights": "teacher" if teacher else "student", "images": len(dataset),
              **metrics.as_dict()}
    if cfg.num_classes == 16:  # SYNTHIA protocol: the 13-class mIoU too
        from diga.data.classes import class_protocol

        names13 = class_protocol(13).names
        vals = [v for n, v in zip(metrics.class_names, metrics.iou, strict=True) if n in names13 and not math.isnan(v)]
        result["miou13"] = sum(vals) / len(vals) if vals else float("nan")
    _print(result, f"target val: {cfg.data.target.kind} ({len(dataset)} images)")
    if json_path is not None:
        atomic_write_json(json_path, result)
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


def _print(result: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in result["iou"].items():
        table.add_row(name, "-" if iou is None or math.isnan(iou) else f"{iou:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU[/]", f"[bold]{result['miou']:.2f}[/]")
    if "miou13" in result:
        table.add_row("mIoU (13 classes)", f"{result['miou13']:.2f}")
    table.add_row("pixel acc", f"{result['pixel_acc']:.2f}")
    console.print(table)


def _evaluate_file(path: Path, overrides: list[str], json_path: Path | None) -> None:
    """An exported .onnx / .engine through the runtime, on its run's target val split."""
    import numpy as np

    from diga.checkpoint import config_for_model
    from diga.data.classes import class_protocol
    from diga.data.datasets import build_dataset
    from diga.errors import UserError
    from diga.io import atomic_write_json
    from diga.metrics import confusion_matrix, metrics_from_confusion
    from diga.runtime import Segmenter

    if not path.is_file():
        raise UserError(f"model not found: {path}", "check the path of the exported file")
    cfg = config_for_model(path, overrides)
    dataset = build_dataset(cfg, "target", "val", train=False)
    backend = "cpu" if cfg.run.device == "cpu" else "auto"
    conf = np.zeros((cfg.num_classes, cfg.num_classes), np.int64)
    with Segmenter(path, backend=backend) as seg:
        if seg.info.num_classes != cfg.num_classes:
            raise UserError(f"{path} predicts {seg.info.num_classes} classes, the data has "
                            f"{cfg.num_classes}", "set data.classes to the model's protocol")
        for index in range(len(dataset)):
            item = dataset[index]
            label = item["label"].numpy().astype(np.int64)
            pred = seg(item["image"].permute(1, 2, 0).numpy(), out_size=label.shape)
            conf += confusion_matrix(pred.astype(np.int64), label, cfg.num_classes)
        provider = seg.describe()
    metrics = metrics_from_confusion(conf, class_protocol(cfg.num_classes).names)
    result = {"model": str(path), "backend": provider, "images": len(dataset), **metrics.as_dict()}
    _print(result, f"target val: {cfg.data.target.kind} ({len(dataset)} images), {provider}")
    if json_path is not None:
        atomic_write_json(json_path, result)
