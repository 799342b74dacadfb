"""What a bench row runs and how it is timed: a checkpoint or an exported file, and the clock.

``TorchRunner`` runs a checkpoint with ``diga eval``'s code (eager or ``torch.compile``d);
``RuntimeRunner`` runs an ``.onnx`` / ``.xml`` / ``.engine`` file through
``diga.runtime.Segmenter``, exactly as an app does. Both take target frames at their own size,
run them at the model's trained scale (or ``bench.input_size``) and return labels at the
frame's size: ``segment`` is what an app calls (the end-to-end latency), ``stages`` the same
work cut where the app's process hands over (host preprocessing, the model call, host
postprocessing), each timed on its own. ``time_loop`` times a call after untimed warm-up runs;
``rss_mb`` and ``_gpu_used_mb`` read the memory it took.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diga.benchmarks.discovery import TargetSet
from diga.config import Config
from diga.runtime import Segmenter, model_input_size, prepare_batch, to_model_size
from diga.runtime.preprocess import TRAINED, RunSize

if TYPE_CHECKING:  # torch for checkpoints' rows only: files bench in a runtime-only install
    import torch


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


def _gpu_used_mb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


Stages = dict[str, Callable[[], Any]]  # "pre", "model", "post": each timed on its own


class TorchRunner:
    """A checkpoint on the config's device, predicting as ``diga eval`` does, at the trained
    scale (or ``bench.input_size``)."""

    def __init__(self, folder: Path, cfg: Config, compile: bool = False) -> None:
        import torch

        from diga.device import select_device
        from diga.train.evaluate import TorchSegmenter

        self.cfg = cfg
        self.torch_device = select_device(cfg.run.device)
        self.device = self.torch_device.type  # "cpu" / "cuda"
        self.segmenter = TorchSegmenter(folder, self.torch_device, cfg.bench.input_size or TRAINED)
        self.eager = self.segmenter.model
        self.model = torch.compile(self.eager) if compile else self.eager
        self.segmenter.model = self.model
        # the config's inference size, as an export of this checkpoint records it
        self.info = self.segmenter.info
        self.provider = f"torch {'compile' if compile else 'eager'}"
        self.static = False

    def run_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return model_input_size(self.info, image_size, self.segmenter.size)

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def segment(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Labels at each frame's size, frame by frame (what ``diga eval RUN`` does)."""
        out = [self.segmenter(frame) for frame in frames]
        self._sync()
        return out

    def stages(self, frame: np.ndarray) -> Stages:
        import torch
        import torch.nn.functional as F

        def pre() -> torch.Tensor:
            resized = to_model_size(frame, self.info, self.segmenter.size)
            return torch.from_numpy(prepare_batch([resized], self.info)).to(self.torch_device)

        x = pre()

        def model() -> torch.Tensor:
            with torch.inference_mode():
                out = self.model(x).logits  # (1, C, h, w): the network alone
            self._sync()
            return out

        logits = model()

        def post() -> np.ndarray:
            with torch.inference_mode():
                up = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=True)
                return up.argmax(1).to(torch.uint8).cpu().numpy()

        return {"pre": pre, "model": model, "post": post}

    def predict(self, target: TargetSet) -> list[np.ndarray]:
        """One image at a time, as ``diga eval RUN`` predicts it (same pixels, same mIoU)."""
        return [self.segmenter(target.hwc(i), out_size=target.label_size(i))
                for i in range(target.count)]

    def flops_graph(self) -> torch.nn.Module:
        from diga.export.onnx_export import ExportWrapper

        return ExportWrapper(self.eager, self.info)

    def close(self) -> None:
        self.model = self.eager = self.segmenter = None  # type: ignore[assignment]


class RuntimeRunner:
    """An exported file through ``diga.runtime.Segmenter``, exactly as an app runs it."""

    def __init__(self, path: Path, backend: str, size: RunSize = TRAINED,
                 hint: str = "latency") -> None:
        self.seg = Segmenter(path, backend=backend, size=size, hint=hint)
        self.info = self.seg.info
        self.provider = self.seg.provider
        self.device = "cpu" if self.seg.backend in ("cpu", "openvino") else "cuda"
        self.static = not self.info.dynamic

    def run_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.seg.run_size(image_size)

    def segment(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return self.seg.predict_batch(frames, max_batch=len(frames))

    def stages(self, frame: np.ndarray) -> Stages:
        """A frame graph: the host stacks (or, for an IR, resizes) frames, the model does the
        rest; a model of the network alone: host resize and normalisation, the network, host
        upsampling of the logits and argmax."""
        from diga.runtime.frames import LABELS, frame_feeds
        from diga.runtime.prediction import frame_prediction, prediction_from_output

        size = tuple(frame.shape[:2])
        run = self.run_size(size)  # type: ignore[arg-type]
        if self.info.input_kind == "frame":
            def pre() -> dict[str, np.ndarray]:
                return frame_feeds(self.info, [frame], run, size)  # type: ignore[arg-type]

            feeds = pre()

            def model() -> list[np.ndarray]:
                return self.seg._model.run_named(feeds, [LABELS])

            labels = model()[0][0]
            return {"pre": pre, "model": model,
                    "post": lambda: frame_prediction(labels, None, size).labels}

        def pre_host() -> np.ndarray:
            return self.seg.prepare([frame])[0]

        batch = pre_host()

        def model_alone() -> np.ndarray:
            return self.seg.run(batch)

        output = model_alone()[0]
        return {"pre": pre_host, "model": model_alone,
                "post": lambda: prediction_from_output(output, self.info, size).labels}

    def predict(self, target: TargetSet) -> list[np.ndarray]:
        """One image at a time, as ``diga eval FILE`` runs it (same label maps, same mIoU)."""
        return [self.seg(target.hwc(i), out_size=target.label_size(i)) for i in range(target.count)]

    def flops_graph(self) -> torch.nn.Module | None:
        try:
            from diga.export.onnx_export import ExportWrapper
            from diga.models import build_model
        except ImportError:  # a runtime-only install: no torch to count FLOPs with
            return None

        name = self.info.provenance.get("model")
        float_info = self.info.replace(input_kind="float", output_kind="logits", layout="NCHW",
                                       frame=None)
        try:  # the same architecture, fresh weights: FLOPs do not depend on them
            return ExportWrapper(build_model(name, self.info.num_classes), float_info,
                                 features=self.info.input_kind == "frame")
        except Exception:  # noqa: BLE001  (no or an unknown model name: FLOPs stay unknown)
            return None

    def close(self) -> None:
        self.seg.close()
