"""One benchmark row per (model, backend): latency, throughput, memory, target mIoU, parity.

What is timed is what is deployed: ``.onnx`` / ``.engine`` files run through
``diga.runtime.Segmenter``; checkpoints run the graph that ``diga export`` writes (the model and
the upsampling of its logits to the input size, ``ExportWrapper``), eager or ``torch.compile``d.
Each timed loop runs a batch prepared once from target-domain images (preprocessing is not
timed), after ``bench.warmup`` untimed runs, for ``bench.time_budget_s`` seconds (at least
``min_iters``, at most ``max_iters`` runs). Latency is at batch 1; throughput at each of
``bench.batch_sizes``.

mIoU uses the first ``bench.max_images`` target val images (at their own size, whatever
``bench.input_size``) and one confusion matrix, as ``diga eval`` does: a checkpoint's row gives
``diga eval RUN``'s mIoU (its default single scale, no flip), a file's ``diga eval FILE``'s.
Pixel agreement (%) compares each row's label maps with those of the fp32 PyTorch checkpoint the
file was exported from, on the same images. A backend that cannot run here is a row with status
``unavailable: <reason>``; a failure while measuring is ``error: <reason>``.
"""

from __future__ import annotations

import difflib
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diga.benchmarks.flops import achieved_gflops, model_flops
from diga.checkpoint import (
    META_FILE,
    Checkpoint,
    config_for_model,
    load_model,
    resolve_checkpoint,
)
from diga.config import Config, load_config
from diga.data.classes import class_protocol
from diga.data.datasets import build_dataset
from diga.device import select_device
from diga.errors import UserError
from diga.export.formats import BACKENDS, FORMATS, ExportFormat, format_of_file
from diga.metrics import confusion_matrix, metrics_from_confusion
from diga.runtime import ModelInfo, Segmenter, prepare_batch
from diga.runtime.preprocess import resize_rgb

MODEL_SUFFIXES = (".onnx", ".engine")
Say = Callable[[str], None]


def check_backends(names: list[str]) -> list[str]:
    """Validate ``--backend`` names against the format table (one error with a did-you-mean)."""
    for name in names:
        if name not in BACKENDS:
            close = difflib.get_close_matches(name, list(BACKENDS), n=1)
            raise UserError(f"unknown backend '{name}'", f"did you mean '{close[0]}'?" if close
                            else f"choose from: {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- which models

@dataclass
class ModelEntry:
    """One model to bench: a checkpoint folder (run by torch) or an exported file."""

    path: Path
    format: ExportFormat
    cfg: Config  # the run's config + overrides: target data, eval batch, bench settings
    reference: Path | None  # checkpoint folder of the fp32 PyTorch model it was exported from
    notes: tuple[str, ...] = ()


@dataclass
class ModelGroup:
    """What one MODEL argument expanded to."""

    argument: Path
    is_run: bool  # a run directory: a missing backend is worth a row saying so
    entries: list[ModelEntry]


def expand_models(models: list[Path], overrides: list[str]) -> list[ModelGroup]:
    """Run dirs -> their checkpoint + ``<run>/export`` files; checkpoint folders; model files.

    Raises:
        UserError: a path that does not exist or is no model.
    """
    from diga.export.pipeline import default_out_dir

    seen: set[Path] = set()
    groups = []
    for arg in map(Path, models):
        if arg.suffix.lower() in MODEL_SUFFIXES or arg.is_file():
            if not arg.is_file():
                raise UserError(f"model not found: {arg}", "give a run directory, a checkpoint "
                                "folder, an .onnx or an .engine file")
            fmt = format_of_file(arg)
            ckpt = _checkpoint_of_export(arg.parent)
            cfg = config_for_model(arg, overrides)  # the run's config, as diga eval takes it
            # config_for_model falls back to the demo preset where no run config is found
            runless = not any((f / "config.yaml").is_file() for f in (arg.parent, arg.parent.parent))
            notes = (f"no run found for {arg.name}: target data from the demo preset + "
                     "overrides",) if runless else ()
            entries = [ModelEntry(arg, fmt, cfg, ckpt.folder if ckpt else None, notes)]
            is_run = False
        else:
            ckpt = resolve_checkpoint(arg)
            cfg = config_for_model(arg, overrides)
            entries = [ModelEntry(ckpt.folder, FORMATS["torch"], cfg, ckpt.folder)]
            is_run = not (arg / META_FILE).is_file()
            if is_run:
                export_dir = default_out_dir(arg)
                source = _checkpoint_of_export(export_dir) or ckpt
                entries += [ModelEntry(f, format_of_file(f), cfg, source.folder)
                            for f in exported_files(export_dir)]
        fresh = [e for e in entries if e.path.resolve() not in seen]
        seen.update(e.path.resolve() for e in fresh)
        groups.append(ModelGroup(arg, is_run, fresh))
    return groups


def exported_files(folder: Path) -> list[Path]:
    """The model files in an export folder, in the order of the format table."""
    if not folder.is_dir():
        return []
    order = list(FORMATS)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES]
    return sorted(files, key=lambda p: (order.index(format_of_file(p).name), p.name))


def _checkpoint_of_export(folder: Path) -> Checkpoint | None:
    """The checkpoint an export folder was written from: export.json's, else ``<run>/checkpoints``."""
    try:
        recorded = json.loads((folder / "export.json").read_text()).get("checkpoint")
        if recorded and (Path(recorded) / META_FILE).is_file():
            return Checkpoint(Path(recorded))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return resolve_checkpoint(folder.parent) if folder.name == "export" else None
    except UserError:
        return None


# ---------------------------------------------------------------- measuring

class TargetSet:
    """The first N target val items, read as ``diga eval`` reads them.

    Items are kept in memory up to ``cache_bytes`` (the whole demo set) and read again from the
    dataset beyond that (full-size Cityscapes), so memory stays bounded for any ``max_images``.
    """

    def __init__(self, cfg: Config, cache_bytes: int = 512 * 2**20) -> None:
        self.dataset = build_dataset(cfg, "target", "val", train=False)
        limit = cfg.bench.max_images
        self.count = len(self.dataset) if limit is None else min(limit, len(self.dataset))
        self.has_labels = self.dataset.has_labels
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached = 0

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image (3, H, W) after the domain's resize, uint8 label (H, W) at its own size."""
        if i in self._cache:
            return self._cache[i]
        it = self.dataset[i]
        pair = (it["image"], it["label"])
        size = pair[0].numel() + pair[1].numel()
        if self._cached + size <= self.cache_bytes:
            self._cache[i] = pair
            self._cached += size
        return pair

    def hwc(self, i: int) -> np.ndarray:
        return self.item(i)[0].permute(1, 2, 0).numpy()  # (H, W, 3) RGB uint8

    def label_size(self, i: int) -> tuple[int, int]:
        return tuple(self.item(i)[1].shape[-2:])  # type: ignore[return-value]

    def batches(self, size: int) -> Iterator[list[int]]:
        """Consecutive index chunks, as ``eval_loader`` batches them."""
        for start in range(0, self.count, size):
            yield list(range(start, min(start + size, self.count)))


def time_loop(fn: Callable[[], Any], warmup: int, budget_s: float, min_iters: int,
              max_iters: int) -> np.ndarray:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls, for about ``budget_s`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters
                                      or time.perf_counter() - start < budget_s):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return np.asarray(times)


def latency_stats(seconds: np.ndarray) -> dict[str, float | int]:
    ms = seconds * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(ms.min()), "iterations": int(ms.size), "total_s": float(seconds.sum())}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


class TorchRunner:
    """A checkpoint on the config's device: the exported graph for timing, ``diga eval``'s code
    for predictions."""

    def __init__(self, folder: Path, cfg: Config, compile: bool = False) -> None:
        from diga.export.onnx_export import ExportWrapper

        self.cfg = cfg
        self.device = select_device(cfg.run.device)
        self.eager, _, _ = load_model(folder, self.device)
        self.model = torch.compile(self.eager) if compile else self.eager
        protocol = class_protocol(cfg.num_classes)
        self.info = ModelInfo(protocol.names, protocol.palette, cfg.data.mean, cfg.data.std)
        self.graph = ExportWrapper(self.model, self.info).to(self.device).eval()
        self.provider = f"torch {'compile' if compile else 'eager'}"
        self.static = False

    def prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(prepare_batch(images, self.info)).to(self.device)

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.graph(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def predict(self, target: TargetSet) -> list[np.ndarray]:
        from diga.train.evaluate import predict_logits

        preds: list[np.ndarray] = []
        for chunk in target.batches(self.cfg.eval.batch_size):
            images = torch.stack([target.item(i)[0] for i in chunk]).to(self.device)
            size = target.label_size(chunk[0])
            logits = predict_logits(self.model, images, size, self.cfg.data.mean, self.cfg.data.std)
            preds.extend(logits.argmax(1).to(torch.uint8).cpu().numpy())
        return preds

    def flops_graph(self) -> torch.nn.Module:
        from diga.export.onnx_export import ExportWrapper

        return ExportWrapper(self.eager, self.info)

    def close(self) -> None:
        self.graph = self.model = self.eager = None  # type: ignore[assignment]


class RuntimeRunner:
    """An exported file through ``diga.runtime.Segmenter``, exactly as an app runs it."""

    def __init__(self, path: Path, backend: str) -> None:
        self.seg = Segmenter(path, backend=backend)
        self.info = self.seg.info
        self.provider = self.seg.provider
        self.device = torch.device("cpu" if self.provider == "CPUExecutionProvider" else "cuda")
        self.static = not self.info.dynamic

    def prepare(self, images: list[np.ndarray]) -> np.ndarray:
        return self.seg.prepare(images)[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.seg.run(batch)

    def predict(self, target: TargetSet) -> list[np.ndarray]:
        """One image at a time, as ``diga eval FILE`` runs it (same label maps, same mIoU)."""
        return [self.seg(target.hwc(i), out_size=target.label_size(i)) for i in range(target.count)]

    def flops_graph(self) -> torch.nn.Module | None:
        from diga.export.onnx_export import ExportWrapper
        from diga.models import build_model

        name = self.info.provenance.get("model")
        float_info = self.info.replace(input_kind="float", output_kind="logits", layout="NCHW")
        try:  # the same architecture, fresh weights: FLOPs do not depend on them
            return ExportWrapper(build_model(name, self.info.num_classes), float_info)
        except Exception:  # noqa: BLE001  (no or an unknown model name: FLOPs stay unknown)
            return None

    def close(self) -> None:
        self.seg.close()


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
        "latency_ms": None, "throughput": [], "peak_rss_mb": None, "rss_increase_mb": None,
        "gpu_memory_mb": None, "flops_per_image": None, "gflops_per_s": None,
        "peak_fraction": None, "latency_vs_torch": None, "images": None, "miou": None,
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
    gpu_before = _gpu_used_mb() if BACKENDS[backend].needs_gpu else None
    try:
        runner: TorchRunner | RuntimeRunner = (
            TorchRunner(entry.path, entry.cfg, compiled) if backend == "torch"
            else RuntimeRunner(entry.path, BACKENDS[backend].runtime))
    except UserError as exc:  # no GPU, no TensorRT, no such provider, run.device=cuda on a CPU
        row["status"] = f"unavailable: {exc}"
        return row
    except Exception as exc:  # a file the runtime cannot load is this row's failure, not the bench's
        row["status"] = f"error: {_one_line(exc)}"
        return row
    row["provider"], row["device"] = runner.provider, runner.device.type
    torch_gpu = backend == "torch" and runner.device.type == "cuda"
    if torch_gpu:
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


def _gpu_used_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _measure_speed(runner: TorchRunner | RuntimeRunner, entry: ModelEntry, row: dict[str, Any],
                   ctx: BenchContext) -> None:
    bench = entry.cfg.bench
    target = ctx.target_set(entry.cfg)
    size = tuple(bench.input_size or target.item(0)[0].shape[-2:])
    pool = [resize_rgb(target.hwc(i % target.count), size)  # (H, W, 3) at the bench size
            for i in range(max(bench.batch_sizes))]
    loop = dict(warmup=bench.warmup, budget_s=bench.time_budget_s, min_iters=bench.min_iters,
                max_iters=bench.max_iters)
    single = runner.prepare(pool[:1])
    row["input_shape"] = list(single.shape)
    times = time_loop(lambda: runner.run(single), **loop)
    row["latency_ms"] = latency_stats(times)
    for b in bench.batch_sizes:
        if b == 1:
            row["throughput"].append({"batch": 1, "images_per_s": 1.0 / float(times.mean()),
                                      "batch_ms_p50": row["latency_ms"]["p50"]})
        elif runner.static:
            row["throughput"].append({"batch": b, "images_per_s": None, "batch_ms_p50": None})
            row["notes"].append(f"static model: batch {b} not measured (batch 1 only)")
        else:
            batch = runner.prepare(pool[:b])
            bt = time_loop(lambda batch=batch: runner.run(batch), **loop)
            row["throughput"].append({"batch": b, "images_per_s": b * bt.size / float(bt.sum()),
                                      "batch_ms_p50": float(np.median(bt) * 1000.0)})
    hw = tuple(single.shape[1:3] if runner.info.layout == "NHWC" else single.shape[2:4])
    name = entry.cfg.model.name if isinstance(runner, TorchRunner) else \
        runner.info.provenance.get("model", "")
    row["flops_per_image"] = ctx.flops(runner, name, hw)
    row["gflops_per_s"] = achieved_gflops(row["flops_per_image"], row["latency_ms"]["p50"])


def _measure_accuracy(runner: TorchRunner | RuntimeRunner, entry: ModelEntry,
                      row: dict[str, Any], ctx: BenchContext, is_reference: bool) -> None:
    cfg = entry.cfg
    target = ctx.target_set(cfg)
    preds = runner.predict(target)
    row["images"] = len(preds)
    if runner.info.num_classes != cfg.num_classes:
        row["notes"].append(f"the model has {runner.info.num_classes} classes, the data config "
                            f"{cfg.num_classes}: no mIoU (set data.classes)")
    elif not target.has_labels:
        row["notes"].append("target val has no labels: no mIoU")
    else:
        conf = np.zeros((cfg.num_classes, cfg.num_classes), np.int64)
        for i, pred in enumerate(preds):
            label = target.item(i)[1].numpy()
            conf += confusion_matrix(pred.astype(np.int64), label.astype(np.int64), cfg.num_classes)
        metrics = metrics_from_confusion(conf, class_protocol(cfg.num_classes).names)
        row["miou"], row["pixel_acc"] = metrics.miou, metrics.pixel_acc
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
                     "machine with TensorRT and an NVIDIA GPU")}
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
        for backend in requested or (list(BACKENDS) if group.is_run else []):
            if backend not in covered:
                result["rows"].append(missing_row(group, backend))
    _relate(result["rows"], result["machine"].get("matmul_gflops"))
    return result


def _relate(rows: list[dict[str, Any]], peak_gflops: float | None) -> None:
    """Each row's median latency over its eager PyTorch reference's, and its share of the peak."""
    eager = {Path(r["model"]).resolve(): r["latency_ms"]["p50"] for r in rows
             if r["backend"] == "torch" and not r["compiled"] and r["latency_ms"]}
    for row in rows:
        torch_p50 = eager.get(Path(row["reference"]).resolve()) if row["reference"] else None
        if row["latency_ms"] and torch_p50:
            row["latency_vs_torch"] = row["latency_ms"]["p50"] / torch_p50
        if row["gflops_per_s"] and peak_gflops and row["device"] == "cpu":
            row["peak_fraction"] = row["gflops_per_s"] / peak_gflops


def rows_below_miou(rows: list[dict[str, Any]], minimum: float) -> list[dict[str, Any]]:
    """Rows with an mIoU under ``minimum`` (rows without one, e.g. no labels, never count)."""
    return [r for r in rows if r["miou"] is not None and r["miou"] < minimum]
