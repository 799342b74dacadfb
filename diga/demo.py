"""``diga demo``: the whole pipeline on the built-in benchmark, on this machine.

source-only -> DiGA warm-up -> DiGA self-training (2 rounds) -> evaluation of each on target
val -> ONNX + INT8 export of the final model -> latency benchmark -> a table, a Markdown
report, a prediction grid and an mIoU-per-stage plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diga.checkpoint import has_checkpoint, load_model, resolve_checkpoint
from diga.config import Config, load_config
from diga.errors import UserError
from diga.io import atomic_write, atomic_write_json, atomic_write_text

# --quick: a smoke run of every step in about two minutes on a 2-core CPU
QUICK = ["train.steps=60", "selftrain.steps=40", "data.builtin.source_train=64",
         "data.builtin.target_train=64", "data.builtin.target_val=24", "train.log_every=10",
         "train.checkpoint_every=30", "train.visual_every=30", "export.calib_images=8",
         "export.parity_images=4", "bench.time_budget_s=1.0"]
STAGES = ("source", "warmup", "selftrain round 1", "selftrain round 2")


@dataclass
class DemoResult:
    out: Path
    miou: dict[str, float] = field(default_factory=dict)  # stage -> target-val mIoU
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time
    bench: list[dict[str, Any]] = field(default_factory=list)  # diga-bench/1 rows
    exported: list[dict[str, Any]] = field(default_factory=list)


def demo_config(quick: bool, overrides: list[str]) -> Config:
    return load_config("demo", (QUICK if quick else []) + list(overrides))


def run_demo(out: Path, quick: bool = False, overrides: list[str] | None = None,
             resume: bool = False, say: Callable[[str], None] = print,
             show_progress: bool = True) -> DemoResult:
    """Train, evaluate, export and benchmark every stage into ``out``."""
    from diga.train.loop import train_stage
    from diga.train.stages import finished_metrics, run_selftrain

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UserError(f"demo folder {out} already exists and is not empty",
                        "pass --resume to continue it, or choose another --out")
    cfg = demo_config(quick, overrides or [])
    result = DemoResult(out)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        tic = time.perf_counter()
        value = fn()
        result.seconds[name] = time.perf_counter() - tic
        return value

    # ---- 1. the baseline and DiGA stage 1, each resumable
    for stage in ("source", "warmup"):
        run_dir = out / stage
        metrics = finished_metrics(run_dir, cfg.train.steps)  # a resumed demo skips it
        if metrics is None:
            say(f"[{stage}] training {cfg.train.steps} steps -> {run_dir}")
            partial = has_checkpoint(run_dir)
            metrics = timed(stage, lambda s=stage, d=run_dir, p=partial: train_stage(
                cfg, s, d, resume=p, show_progress=show_progress).metrics)
        result.miou[stage] = metrics["target_val_miou"]
        say(f"[{stage}] target-val mIoU {result.miou[stage]:.2f}")

    # ---- 2. DiGA stage 2: two rounds of self-training from the warm-up
    st_cfg = cfg.model_copy(deep=True)
    st_cfg.selftrain.rounds = 2
    say(f"[selftrain] 2 rounds of {cfg.stage_steps('selftrain')} steps -> {out / 'selftrain'}")
    rounds = timed("selftrain", lambda: run_selftrain(
        st_cfg, out / "warmup", out / "selftrain", resume=True, show_progress=show_progress))
    for r, stage_result in enumerate(rounds, 1):
        result.miou[f"selftrain round {r}"] = stage_result.metrics["target_val_miou"]
        say(f"[selftrain round {r}] target-val mIoU {stage_result.metrics['target_val_miou']:.2f}")
    final = out / "selftrain"

    # ---- 3. deployment: ONNX + INT8 of the final model, then the latency benchmark
    from diga.export.pipeline import ExportOptions, export_checkpoint

    summary = timed("export", lambda: export_checkpoint(
        final, [], ExportOptions(int8=True), out / "export", report=lambda m: say(f"[export] {m}")))
    result.exported = [f.as_dict() for f in summary.files]
    bench_keys = [o for o in (QUICK if quick else []) + list(overrides or []) if o.startswith("bench.")]
    bench = timed("bench", lambda: _bench(final, out / "export", bench_keys, say))
    result.bench = bench["rows"]

    # ---- 4. the report
    _prediction_grid(out, cfg)
    _miou_plot(out / "miou_per_stage.png", result.miou)
    atomic_write_json(out / "demo.json", {"miou": result.miou, "seconds": result.seconds,
                                          "bench": result.bench, "exported": result.exported,
                                          "config": cfg.to_dict()})
    atomic_write_text(out / "report.md", _markdown(result, cfg))
    return result


def _bench(run: Path, export_dir: Path, overrides: list[str], say: Callable[[str], None]) -> dict:
    """Torch eager vs onnxruntime fp32 and int8 on the CPU; the full report goes to bench/."""
    from diga.benchmarks.latency import run_bench
    from diga.benchmarks.report import write_reports

    say("[bench] torch eager, onnxruntime fp32 and int8 on the CPU")
    checkpoint = resolve_checkpoint(run).folder
    result = run_bench([checkpoint, export_dir / "model.onnx", export_dir / "model.int8.onnx"],
                       overrides, backends=["torch", "ort-cpu"])
    result["rows"] = [r for r in result["rows"] if r["status"] == "ok"]
    write_reports(result, run.parent / "bench")
    return result


def _prediction_grid(out: Path, cfg: Config, rows: int = 4) -> None:
    """Columns: target image, the prediction of each stage, the label."""
    from diga.data.classes import class_protocol
    from diga.data.datasets import build_dataset
    from diga.train.evaluate import predict_logits
    from diga.train.visuals import save_grid

    dataset = build_dataset(cfg, "target", "val", train=False)
    items = [dataset[i] for i in np.linspace(0, len(dataset) - 1, rows).round().astype(int)]
    images = torch.stack([it["image"] for it in items])
    columns: dict[str, torch.Tensor] = {"target image": images}
    for name, run in (("source-only", out / "source"), ("warm-up", out / "warmup"),
                      ("self-training", out / "selftrain")):
        model, _, _ = load_model(run)
        logits = predict_logits(model, images, tuple(images.shape[-2:]), cfg.data.mean, cfg.data.std)
        columns[name] = logits.argmax(1)
    columns["label"] = torch.stack([it["label"] for it in items]).long()
    save_grid(out / "predictions.png", columns, class_protocol(cfg.num_classes).palette, rows=rows)


def _miou_plot(path: Path, miou: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    names = list(miou)
    bars = ax.bar(range(len(names)), [miou[n] for n in names], color="#3b6ea8")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks(range(len(names)), [n.replace("selftrain ", "self-train\n") for n in names])
    ax.set_ylabel("target-val mIoU")
    ax.set_title("DiGA on the built-in benchmark")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _markdown(result: DemoResult, cfg: Config) -> str:
    lines = ["# diga demo", "",
             f"Built-in benchmark ({cfg.data.builtin.size[0]}x{cfg.data.builtin.size[1]}, "
             f"{cfg.data.builtin.source_train} source / {cfg.data.builtin.target_train} target train "
             f"/ {cfg.data.builtin.target_val} target val images), {cfg.model.name}, "
             f"{cfg.train.steps} steps for source-only and warm-up, "
             f"{cfg.stage_steps('selftrain')} per self-training round.", "",
             "| stage | target-val mIoU |", "|---|---|"]
    lines += [f"| {stage} | {miou:.2f} |" for stage, miou in result.miou.items()]
    lines += ["", "![mIoU per stage](miou_per_stage.png)", "",
              "![predictions: target image, each stage, label](predictions.png)", "",
              "## Deployment", "", "| model | backend | p50 ms | mIoU | agreement |", "|---|---|---|---|---|"]
    for row in result.bench:
        lines.append(f"| {_model_name(row)} | {row['backend']} ({row['precision']}) | "
                     f"{_fmt(row['latency_ms']['p50'])} | {_fmt(row['miou'])} | "
                     f"{_fmt(row['pixel_agreement'])} % |")
    lines += ["", "Full benchmark: [bench/bench.md](bench/bench.md)."]
    lines += ["", "## Time", ""]
    lines += [f"- {name}: {sec:.0f} s" for name, sec in result.seconds.items()]
    return "\n".join(lines) + "\n"


def _model_name(row: dict[str, Any]) -> str:
    return Path(row["model"]).name if row["backend"] != "torch" else "checkpoint (PyTorch)"


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
