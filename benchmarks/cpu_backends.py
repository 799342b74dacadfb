"""CPU runtime settings, measured: onnxruntime's session options and OpenVINO's hints.

For an exported ONNX (and its IR next to it), latency p50 at batch 1 of each setting, with
the settings ``diga.runtime.Segmenter`` uses marked, so that a setting is kept only where it
measurably pays:

- onnxruntime: graph optimisation basic / extended / all; intra-op threads 1 / the physical
  cores (onnxruntime's default, 0) / every logical CPU; spinning on (default) / off;
- OpenVINO: latency / throughput hint; f32 / bf16 precision hint where the CPU has bf16.

Run:

    python -m diga.benchmarks.cpu_backends runs/x/export/model.onnx [--size 256x512]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from diga.benchmarks.runners import latency_stats, time_loop


def _ort_variants() -> dict[str, dict[str, Any]]:
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    logical = os.cpu_count() or 1
    return {
        "all, threads default, spin (runtime)": {},
        "basic": {"level": level.ORT_ENABLE_BASIC},
        "extended": {"level": level.ORT_ENABLE_EXTENDED},
        "threads 1": {"threads": 1},
        f"threads {logical} (logical)": {"threads": logical},
        "no spinning": {"spin": "0"},
    }


def _ort_session(path: Path, level: Any = None, threads: int = 0, spin: str = "1"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(onnx_path: Path, size: tuple[int, int], budget_s: float = 3.0) -> dict[str, Any]:
    from diga.runtime import Segmenter
    from diga.runtime.frames import frame_feeds

    info = Segmenter(onnx_path, "cpu").info
    rng = np.random.default_rng(0)
    if info.input_kind == "frame":  # a frame at the run size: the network and the graph's ends
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        feed = frame_feeds(info, [frame], size, size)
        ir_feed = frame_feeds(info.replace(frame="openvino"), [frame], size, size)
    else:
        feed = ir_feed = {"x": rng.standard_normal((1, 3, *size)).astype(np.float32)}
    rows: dict[str, Any] = {}
    for name, variant in _ort_variants().items():
        session = _ort_session(onnx_path, **variant)
        if info.input_kind != "frame":
            feed = {session.get_inputs()[0].name: feed["x"]}
        rows[f"onnxruntime: {name}"] = latency_stats(
            time_loop(lambda s=session, f=feed: s.run(None, f), 3, budget_s, 5, 1000))["p50"]
    xml = onnx_path.with_suffix(".xml")
    if xml.is_file():
        from diga.runtime.openvino_model import shared_core

        core = shared_core()
        has_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        for hint in ("LATENCY", "THROUGHPUT"):
            for precision in ("f32", "bf16") if has_bf16 else ("f32",):
                compiled = core.compile_model(str(xml), "CPU", {
                    "PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision})
                request = compiled.create_infer_request()
                mark = " (runtime)" if (hint, precision) == ("LATENCY", "f32") else ""
                feeds = ir_feed if info.input_kind == "frame" else {0: ir_feed["x"]}
                rows[f"openvino: {hint.lower()}, {precision}{mark}"] = latency_stats(
                    time_loop(lambda r=request, f=feeds: r.infer(f), 3, budget_s, 5, 1000))["p50"]
    return {"model": str(onnx_path), "size": list(size), "precision": info.precision,
            "cpu_count": os.cpu_count(), "p50_ms": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--size", default=None, help="HxW (default: the model's inference size)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from diga.runtime import Segmenter

    if args.size:
        h, w = (int(v) for v in args.size.split("x"))
    else:
        h, w = Segmenter(args.onnx, "cpu").info.inference_size or (256, 512)
    result = measure(args.onnx, (h, w))
    base = next(iter(result["p50_ms"].values()))
    for name, p50 in result["p50_ms"].items():
        print(f"{name:<48} {p50:9.2f} ms  {p50 / base:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
