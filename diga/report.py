"""The report of a ``diga run`` (and ``diga demo``): ``report.md`` with per-stage mIoU, the
curves of the job, a prediction grid, the final model's evaluation and the bench table; the
same as JSON in ``summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diga.config import Config
from diga.io import atomic_write, atomic_write_json, atomic_write_text

SUMMARY = "summary.json"


def write_report(cfg: Config, out: Path, result: Any, options: Any,
                 runs: dict[str, Path]) -> None:
    """``report.md``, ``summary.json`` and the pictures of the job in ``out``.

    Args:
        result: the ``diga.pipeline.PipelineResult`` (mIoU per stage, eval, bench, exports).
        options: its ``diga.pipeline.Options`` (title, config name).
        runs: the trained stages to show in the prediction grid, by column name.
    """
    runs = {name: run for name, run in runs.items() if (run / "checkpoints").is_dir()}
    pictures = []
    if any(v is not None for v in result.miou.values()):
        miou_plot(out / "miou_per_stage.png", {k: v for k, v in result.miou.items()
                                               if v is not None}, options.title)
        pictures.append(("mIoU per stage", "miou_per_stage.png"))
    from diga.runs import plot_runs, resolve_runs

    plot_runs(resolve_runs([out]), out / "curves.png")
    pictures.append(("curves: loss, learning rate, kept share, mIoU", "curves.png"))
    if runs and cfg.data.target.kind != "none":
        prediction_grid(out / "predictions.png", cfg, runs)
        pictures.append(("predictions: target image, each stage, label", "predictions.png"))
    atomic_write_json(out / SUMMARY, {
        "config": options.config_name, "miou": result.miou, "eval": result.eval,
        "bench": result.bench, "exported": result.exported, "seconds": result.seconds,
        "resolved_config": cfg.to_dict()})
    atomic_write_text(out / "report.md", markdown(cfg, result, options, pictures))


def prediction_grid(path: Path, cfg: Config, runs: dict[str, Path], rows: int = 4,
                    width: int = 320) -> None:
    """Columns: a target val image, each run's prediction, its label (where there are labels).

    Each image is predicted at the size the dataset gives it (the target resize: the trained
    scale) and upsampled to its label's size, as ``diga eval`` scores it; every tile is then
    shown at one size, ``width`` pixels wide, so frames of any size and resize fit one grid.
    """
    import torch.nn.functional as F

    from diga.checkpoint import load_model
    from diga.data.classes import class_protocol
    from diga.data.datasets import build_dataset
    from diga.device import select_device
    from diga.train.evaluate import predict_logits
    from diga.train.visuals import save_grid

    device = select_device(cfg.run.device)
    dataset = build_dataset(cfg, "target", "val", train=False)
    picks = dict.fromkeys(np.linspace(0, len(dataset) - 1, min(rows, len(dataset)))
                          .round().astype(int).tolist())
    items = [dataset[i] for i in picks]
    first = items[0]["label"].shape[-2:] if dataset.has_labels else items[0]["image"].shape[-2:]
    shown = (max(1, round(width * first[0] / first[1])), width)

    def fit(x: torch.Tensor, labels: bool) -> torch.Tensor:
        x = x[None, None].float() if labels else x[None].float()
        x = F.interpolate(x, size=shown, mode="nearest" if labels else "bilinear",
                          align_corners=None if labels else False)
        return x[0, 0].long() if labels else x[0]

    columns: dict[str, list[torch.Tensor]] = {"target image": []}
    columns.update({name: [] for name in runs})
    if dataset.has_labels:
        columns["label"] = []
    models = {name: load_model(run, device)[0].eval() for name, run in runs.items()}
    for item in items:
        image = item["image"]
        size = tuple(item["label"].shape[-2:]) if dataset.has_labels else tuple(image.shape[-2:])
        columns["target image"].append(fit(image, labels=False))
        for name, model in models.items():
            logits = predict_logits(model, image[None].to(device), size, cfg.data.mean,
                                    cfg.data.std)
            columns[name].append(fit(logits.argmax(1)[0].cpu(), labels=True))
        if dataset.has_labels:
            columns["label"].append(fit(item["label"], labels=True))
    save_grid(path, {k: torch.stack(v) for k, v in columns.items()},
              class_protocol(cfg.num_classes).palette, rows=len(items))


def miou_plot(path: Path, miou: dict[str, float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    names = list(miou)
    bars = ax.bar(range(len(names)), [miou[n] for n in names], color="#3b6ea8")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks(range(len(names)), [n.replace("selftrain ", "self-train\n") for n in names])
    ax.set_ylabel("target-val mIoU")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def markdown(cfg: Config, result: Any, options: Any,
             pictures: list[tuple[str, str]]) -> str:
    data = cfg.data
    if data.source.kind == "builtin":
        b = data.builtin
        what = (f"Built-in benchmark ({b.size[0]}x{b.size[1]}, {b.source_train} source / "
                f"{b.target_train} target train / {b.target_val} target val images)")
    else:
        what = f"{data.source.kind} -> {data.target.kind}"
    lines = [f"# {options.title}" + (f": {options.config_name}" if options.config_name else ""),
             "", f"{what}, {cfg.model.name}, {cfg.stage_steps('warmup')} warm-up steps, "
             f"{cfg.selftrain.rounds} self-training round(s) of {cfg.stage_steps('selftrain')}.",
             "", "| stage | target-val mIoU |", "|---|---|"]
    lines += [f"| {stage} | {_fmt(miou)} |" for stage, miou in result.miou.items()]
    lines += [""] + [f"![{alt}]({file})\n" for alt, file in pictures]
    if result.eval:
        lines += _eval_lines(result.eval)
    if result.bench:
        lines += ["## Deployment", "", "| model | backend | p50 ms (frame in, labels out) | "
                  "mIoU | agreement |", "|---|---|---|---|---|"]
        for row in result.bench:
            name = Path(row["model"]).name if row["backend"] != "torch" else "checkpoint (PyTorch)"
            lines.append(f"| {name} | {row['backend']} ({row['precision']}) | "
                         f"{_fmt(row['latency_ms']['p50'])} | {_fmt(row['miou'])} | "
                         f"{_fmt(row['pixel_agreement'])} % |")
        lines += ["", "Full benchmark: [bench/bench.md](bench/bench.md).", ""]
    if result.seconds:
        lines += ["## Time (this attempt)", ""]
        lines += [f"- {name}: {sec:.0f} s" for name, sec in result.seconds.items()]
    return "\n".join(lines) + "\n"


def _eval_lines(ev: dict[str, Any]) -> list[str]:
    lines = ["## Final model", ""]
    if "targets" in ev:
        lines += ["| target | mIoU |", "|---|---|"]
        lines += [f"| {name} | {_fmt(r.get('miou'))} |" for name, r in ev["targets"].items()]
    else:
        lines.append(f"{ev.get('kind')} val, {ev.get('images')} images: mIoU {_fmt(ev.get('miou'))}"
                     + (f", 13 classes {_fmt(ev['miou13'])}" if ev.get("miou13") is not None
                        else ""))
    return lines + ["", "Per-class IoU: [eval/eval.json](eval/eval.json).", ""]


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
