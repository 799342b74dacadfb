"""One benchmark row per (model, backend): latency, throughput, memory, target mIoU, parity.

What is timed is what an app gets: a target frame at its own size in (the target val images,
as the camera gives them), labels at that size out. ``.onnx`` / ``.xml`` / ``.engine`` files
run through ``diga.runtime.Segmenter``, checkpoints through ``diga eval``'s code, eager or
``torch.compile``d. The end-to-end latency is the headline (the ratio to PyTorch uses it); the
same work is also timed in its parts, as Ultralytics reports them: ``pre`` (host work before
the model call: for a frame graph stacking the frames, or for an IR resizing them; for a model
of the network alone the resize and normalisation), ``model`` (the call: a frame graph does its
resize, normalisation, upsampling and argmax inside it) and ``post`` (host work after it: the
logits' upsampling and argmax for a model of the network alone). Each timed loop runs after
``bench.warmup`` untimed runs, for ``bench.time_budget_s`` seconds (at least ``min_iters``, at
most ``max_iters`` runs). Latency is at batch 1; throughput at each of ``bench.batch_sizes``
frames per call, end to end.

mIoU uses the first ``bench.max_images`` target val images, given at their own size and run
at the model's trained scale (or ``bench.input_size``), labels compared at full resolution in
one confusion matrix, as ``diga eval`` does: a checkpoint's row gives ``diga eval RUN``'s mIoU,
a file's ``diga eval FILE``'s (SYNTHIA's 16 classes: the 13-class mIoU too).
Pixel agreement (%) compares each row's label maps with those of the fp32 PyTorch checkpoint the
file was exported from, on the same images. A backend that cannot run here is a row with status
``unavailable: <reason>``; a failure while measuring is ``error: <reason>``.
"""


from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diga.benchmarks.discovery import (
    ModelEntry,
    ModelGroup,
    TargetSet,
    check_backends,
    expand_models,
)
from diga.benchmarks.flops import achieved_gflops, model_flops
from diga.benchmarks.runners import (
    RuntimeRunner,
    TorchRunner,
    _gpu_used_mb,
    latency_stats,
    reset_peak_rss,
    rss_mb,
    time_loop,
)
from diga.config import Config, load_config
from diga.errors import UserError
from diga.export.formats import BENCH_BACKENDS, ExportFormat
from diga.protocols import plan_scoring
from diga.runtime import SegmenterWarning
from diga.runtime.preprocess import TRAINED

Say = Callable[[str], None]


# ---------------------------------------------------------------- measuring

class BenchContext:
    """Caches shared by the rows of one bench: target images, reference predictions, FLOPs."""

    def __init__(self) -> None:
        self._targets: dict[str, TargetSet] = {}
        self._references: dict[tuple[str, str], list[np.ndarray]] = {}
        self._flops: dict[tuple[str, int, tuple[int, int]], int | None] = {}

    @staticmethod
    def _data_key(cfg: Config) -> str:
        return json.dumps([cfg.to_dict()["data"], cfg.bench.max_images], sort_keys=True)

    def target_set(self, cfg: Config) -> TargetSet:
        key = self._data_key(cfg)
        if key not in self._targets:
            self._targets[key] = TargetSet(cfg)
        return self._targets[key]

    def reference(self, folder: Path, cfg: Config,
                  preds: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """fp32 eager PyTorch label maps of a checkpoint on the target set (given or computed)."""
        key = (str(folder.resolve()), self._data_key(cfg))
        if preds is not None:
            self._references.setdefault(key, preds)
        if key not in self._references:
            runner = TorchRunner(folder, cfg)
            self._references[key] = runner.predict(self.target_set(cfg))
            runner.close()
        return self._references[key]

    def flops(self, runner: TorchRunner | RuntimeRunner, name: str,
              size: tuple[int, int]) -> int | None:
        key = (name, runner.info.num_classes, size)
        if key not in self._flops:
            graph = runner.flops_graph()
            self._flops[key] = model_flops(graph, size) if graph is not None else None
        return self._flops[key]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _file_size(entry: ModelEntry) -> int:
    if entry.path.is_dir():
        return sum(p.stat().st_size for p in entry.path.glob("model.safetensors"))
    return entry.path.stat().st_size


def new_row(model: str, backend: str, fmt: ExportFormat | None, status: str) -> dict[str, Any]:
    """A row with every key present (values None until measured)."""
    return {
        "model": model, "format": fmt.name if fmt else None, "backend": backend,
        "precision": fmt.precision if fmt else None, "compiled": False, "status": status,
        "provider": None, "device": None, "file_size_bytes": None, "input_shape": None,
        "run_size": None, "latency_ms": None, "parts_ms": None, "throughput": [],
        "peak_rss_mb": None,
        "rss_increase_mb": None,
        "gpu_memory_mb": None, "flops_per_image": None, "gflops_per_s": None,
        "latency_vs_torch": None, "images": None, "miou": None,
        "miou13": None, "classes": None, "mapped_from": None,
        "pixel_acc": None, "pixel_agreement": None, "reference": None, "notes": [],
    }


def measure_row(entry: ModelEntry, backend: str, ctx: BenchContext,
                compiled: bool = False) -> dict[str, Any]:
    """Measure one (model, backend) row; never raises for a backend that cannot run."""
    row = new_row(str(entry.path), backend, entry.format, "ok")
    row["compiled"] = compiled
    row["file_size_bytes"] = _file_size(entry)
    row["reference"] = str(entry.reference) if entry.reference else None
    row["notes"].extend(entry.notes)
    reset_peak_rss()
    rss_before = rss_mb("VmRSS")
    # onnxruntime / TensorRT allocate outside torch: the device's used memory before and after
    gpu_before = _gpu_used_mb() if BENCH_BACKENDS[backend].needs_gpu else None
    try:
        with warnings.catch_warnings(record=True) as caught:  # e.g. no inference size recorded
            warnings.simplefilter("always", SegmenterWarning)
            runner: TorchRunner | RuntimeRunner = (
                TorchRunner(entry.path, entry.cfg, compiled) if backend == "torch"
                else RuntimeRunner(entry.path, BENCH_BACKENDS[backend].runtime,
                                   entry.cfg.bench.input_size or TRAINED, BENCH_BACKENDS[backend].hint))
        row["notes"].extend(str(w.message) for w in caught
                            if issubclass(w.category, SegmenterWarning))
    except UserError as exc:  # no GPU, no TensorRT, no such provider, run.device=cuda on a CPU
        row["status"] = f"unavailable: {exc}"
        return row
    except ModuleNotFoundError as exc:  # a checkpoint in a runtime-only install
        row["status"] = (f"unavailable: running a checkpoint needs {exc.name}, which is not "
                         "installed; pip install 'diga[train]'")
        return row
    except Exception as exc:  # a file the runtime cannot load is this row's failure, not the bench's
        row["status"] = f"error: {_one_line(exc)}"
        return row
    row["provider"], row["device"] = runner.provider, runner.device
    torch_gpu = backend == "torch" and runner.device == "cuda"
    if torch_gpu:
        import torch

        torch.cuda.reset_peak_memory_stats(runner.device)  # the peak starts at the weights
    try:
        _measure_speed(runner, entry, row, ctx)
        row["peak_rss_mb"] = rss_mb("VmHWM")
        row["rss_increase_mb"] = max(row["peak_rss_mb"] - rss_before, 0.0)
        if torch_gpu:
            row["gpu_memory_mb"] = torch.cuda.max_memory_allocated(runner.device) / 2**20
        elif gpu_before is not None:
            row["gpu_memory_mb"] = max((_gpu_used_mb() or 0.0) - gpu_before, 0.0)
        _measure_accuracy(runner, entry, row, ctx, is_reference=backend == "torch" and not compiled
                          and entry.reference == entry.path)
    except Exception as exc:  # noqa: BLE001  (a row reports its own failure; the others go on)
        row["status"] = f"error: {_one_line(exc)}"
    finally:
        runner.close()
    return row


def _measure_speed(runner: TorchRunner | RuntimeRunner, entry: ModelEntry, row: dict[str, Any],
                   ctx: BenchContext) -> None:
    bench = entry.cfg.bench
    target = ctx.target_set(entry.cfg)
    # target frames as a camera gives them, at their own size; the model runs them at its run
    # size (the trained scale, or bench.input_size) and returns labels at their size
    frames = [target.hwc(i % target.count) for i in range(max(bench.batch_sizes))]
    frame = frames[0]
    loop = dict(warmup=bench.warmup, budget_s=bench.time_budget_s, min_iters=bench.min_iters,
                max_iters=bench.max_iters)
    row["input_shape"] = [1, *frame.shape]
    row["run_size"] = list(runner.run_size(frame.shape[:2]))
    times = time_loop(lambda: runner.segment([frame]), **loop)
    row["latency_ms"] = latency_stats(times)
    parts = runner.stages(frame)
    row["parts_ms"] = {name: float(np.median(time_loop(fn, **loop)) * 1000.0)
                       for name, fn in parts.items()}
    for b in bench.batch_sizes:
        if b == 1:
            row["throughput"].append({"batch": 1, "images_per_s": 1.0 / float(times.mean()),
                                      "batch_ms_p50": row["latency_ms"]["p50"]})
        elif runner.static:
            row["throughput"].append({"batch": b, "images_per_s": None, "batch_ms_p50": None})
            row["notes"].append(f"static model: batch {b} not measured (batch 1 only)")
        else:
            bt = time_loop(lambda b=b: runner.segment(frames[:b]), **loop)
            row["throughput"].append({"batch": b, "images_per_s": b * bt.size / float(bt.sum()),
                                      "batch_ms_p50": float(np.median(bt) * 1000.0)})
    name = entry.cfg.model.name if isinstance(runner, TorchRunner) else \
        runner.info.provenance.get("model", "")
    row["flops_per_image"] = ctx.flops(runner, name, tuple(row["run_size"]))
    # the network's counted FLOPs over the model call's time (a frame graph's call holds its
    # resize and argmax too, so this understates the network's own rate a little)
    row["gflops_per_s"] = achieved_gflops(row["flops_per_image"], row["parts_ms"]["model"])


def _measure_accuracy(runner: TorchRunner | RuntimeRunner, entry: ModelEntry,
                      row: dict[str, Any], ctx: BenchContext, is_reference: bool) -> None:
    cfg = entry.cfg
    target = ctx.target_set(cfg)
    preds = runner.predict(target)
    row["images"] = len(preds)
    try:
        scoring = plan_scoring(runner.info.class_names, target.protocol, (), cfg.num_classes,
                               "the model")
    except UserError as exc:  # the row's latency stands; only its mIoU cannot be measured
        scoring = None
        row["notes"].append(f"no mIoU: {exc}")
    if scoring is not None and not target.has_labels:
        row["notes"].append("target val has no labels: no mIoU")
    elif scoring is not None:
        row["notes"] += list(scoring.notes)
        conf = np.zeros((scoring.size, scoring.size), np.int64)
        for i, pred in enumerate(preds):
            label = target.item(i)[1]
            conf += scoring.confusion(pred.astype(np.int64), label.astype(np.int64))
        metrics = scoring.metrics(conf)
        row["miou"], row["pixel_acc"] = metrics.miou, metrics.pixel_acc
        row["classes"], row["mapped_from"] = metrics.num_classes, metrics.mapped_from
        row["miou13"] = metrics.miou13  # SYNTHIA's 16 classes: the 13-class mIoU too
    if entry.reference is None:
        row["notes"].append("no PyTorch checkpoint found for this file: no pixel agreement")
        return
    try:
        reference = ctx.reference(entry.reference, cfg, preds if is_reference else None)
    except Exception as exc:  # noqa: BLE001  (the row itself ran; only the comparison is lost)
        row["notes"].append(f"no pixel agreement: the PyTorch reference failed ({_one_line(exc)})")
        return
    agree = sum(int((p == r).sum()) for p, r in zip(preds, reference, strict=True))
    row["pixel_agreement"] = 100.0 * agree / max(sum(r.size for r in reference), 1)


def missing_row(group: ModelGroup, backend: str) -> dict[str, Any]:
    """A row for a backend that none of a group's models can run on."""
    needs = {"torch": ("a checkpoint", "give the run directory or checkpoint folder"),
             "trt": ("a TensorRT engine (.engine)", "build one with 'diga export RUN --trt' on a "
                     "machine with TensorRT and an NVIDIA GPU"),
             "openvino": ("an OpenVINO IR (.xml)", "write one with 'diga export RUN --openvino'"),
             "openvino-tput": ("an OpenVINO IR (.xml)",
                               "write one with 'diga export RUN --openvino'")}
    what, hint = needs.get(backend, ("an .onnx file", "write one with 'diga export RUN'"))
    return new_row(str(group.argument), backend, None,
                   f"unavailable: {backend} needs {what} and {group.argument} has none; {hint}")


# ---------------------------------------------------------------- the whole bench

def run_bench(models: list[Path], overrides: list[str] | None = None,
              backends: list[str] | None = None, compile: bool = False,
              say: Say | None = None) -> dict[str, Any]:
    """Bench every (model, backend) pair; returns the JSON-ready result (``diga-bench/1``).

    Args:
        models: run directories, checkpoint folders, .onnx / .engine files.
        overrides: ``key=value`` config overrides (target data, ``bench.*``, ``eval.batch_size``).
        backends: keep only these (default: every backend each model's format can run on; for
            run directories a backend none of its files can run on becomes an ``unavailable``
            row, as does any requested backend no model can run on).
        compile: add a ``torch.compile`` row next to each eager PyTorch row.
    """
    from diga.benchmarks.flops import machine_info

    say = say or (lambda msg: None)
    requested = check_backends(backends) if backends else None
    groups = expand_models(models, list(overrides or []))
    first = groups[0].entries[0].cfg if groups and groups[0].entries else load_config(None, overrides)
    say("timing float32 matmuls for the machine's peak")
    result: dict[str, Any] = {
        "schema": "diga-bench/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_models": [str(m) for m in models],
        "settings": {**first.bench.model_dump(mode="json"), "compile": compile,
                     "eval_batch_size": first.eval.batch_size},
        "machine": machine_info(first.bench.matmul_size),
        "rows": [],
    }
    ctx = BenchContext()
    for group in groups:
        covered: set[str] = set()
        for entry in group.entries:
            for backend in entry.format.backends:
                if requested and backend not in requested:
                    continue
                covered.add(backend)
                for compiled in ([False, True] if backend == "torch" and compile else [False]):
                    label = f"{entry.path.name}: {backend}{' (compile)' if compiled else ''}"
                    say(f"benchmarking {label}")
                    result["rows"].append(measure_row(entry, backend, ctx, compiled))
        for backend in requested or (list(BENCH_BACKENDS) if group.is_run else []):
            if backend not in covered:
                result["rows"].append(missing_row(group, backend))
    _relate(result["rows"])
    return result


def _relate(rows: list[dict[str, Any]]) -> None:
    """Each row's median end-to-end latency over its eager PyTorch reference's."""
    eager = {Path(r["model"]).resolve(): r["latency_ms"]["p50"] for r in rows
             if r["backend"] == "torch" and not r["compiled"] and r["latency_ms"]}
    for row in rows:
        torch_p50 = eager.get(Path(row["reference"]).resolve()) if row["reference"] else None
        if row["latency_ms"] and torch_p50:
            row["latency_vs_torch"] = row["latency_ms"]["p50"] / torch_p50


def rows_below_miou(rows: list[dict[str, Any]], minimum: float) -> list[dict[str, Any]]:
    """Rows with an mIoU under ``minimum`` (rows without one, e.g. no labels, never count)."""
    return [r for r in rows if r["miou"] is not None and r["miou"] < minimum]
