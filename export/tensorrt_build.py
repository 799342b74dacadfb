"""ONNX -> TensorRT engine with TensorRT 10's Python API.

Builder, network from the ONNX parser (every parser error is logged), FP16 / INT8 builder
flags (INT8 is explicit quantisation: the scales come from the QDQ nodes of
``model.int8.onnx``, no calibrator), one optimisation profile from ``export.trt_*``, a workspace
limit, and a timing cache file reused across builds. Next to the engine goes a JSON side-car
with the model's metadata, which ``diga.runtime.Segmenter`` reads. TensorRT is imported
lazily; without it, or without a GPU, one ``UserError`` says so.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from diga.config import ExportConfig
from diga.errors import UserError
from diga.io import atomic_write_bytes, atomic_write_json
from diga.runtime.metadata import ModelInfo
from diga.runtime.segmenter import engine_sidecar
from diga.runtime.tensorrt_engine import import_tensorrt, require_gpu

log = logging.getLogger("diga.export")


def check_tensorrt_ready() -> Any:
    """The ``tensorrt`` module, after checking that it is installed and a GPU is visible."""
    trt = import_tensorrt()
    require_gpu("building a TensorRT engine")
    return trt


def profile_shapes(info: ModelInfo, export: ExportConfig) -> dict[str, tuple[int, ...]]:
    """min / opt / max input shapes for the optimisation profile, in the model's layout.

    From ``export.trt_*``, widened where needed to take the export size (``info.input_size``),
    at which parity is checked.
    """
    lo, opt, hi = export.trt_min_size, export.trt_opt_size, export.trt_max_size
    if info.input_size is not None:
        lo = (min(lo[0], info.input_size[0]), min(lo[1], info.input_size[1]))
        hi = (max(hi[0], info.input_size[0]), max(hi[1], info.input_size[1]))
    opt = (min(max(opt[0], lo[0]), hi[0]), min(max(opt[1], lo[1]), hi[1]))
    batches = {"min": 1, "opt": max(1, export.trt_max_batch // 2), "max": export.trt_max_batch}
    sizes = {"min": lo, "opt": opt, "max": hi}
    shapes = {}
    for key in ("min", "opt", "max"):
        (h, w), b = sizes[key], batches[key]
        shapes[key] = (b, h, w, 3) if info.layout == "NHWC" else (b, 3, h, w)
    return shapes


def _gpu_name() -> str | None:
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        return props.name.decode(errors="replace").strip("\x00") if int(err) == 0 else None
    except Exception:  # the name is only provenance
        return None


def build_engine(onnx_path: Path, engine_path: Path, precision: str, info: ModelInfo,
                 export: ExportConfig, timing_cache: Path) -> dict[str, Any]:
    """Build and serialise an engine; returns what its side-car JSON says.

    Args:
        precision: ``fp16`` (FP16 kernels allowed) or ``int8`` (``onnx_path`` must be the QDQ
            model; FP16 stays allowed for the layers left in float).

    Raises:
        UserError: no TensorRT or GPU, a parse failure (all parser errors are logged first),
            or a failed build.
    """
    trt = check_tensorrt_ready()
    if precision == "int8" and info.precision != "int8":
        raise UserError(f"an INT8 engine is built from the QDQ model, but {onnx_path.name} is "
                        f"{info.precision}", "export with --int8 --trt")
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for error in errors:
            log.error("TensorRT ONNX parser: %s", error)
        first = errors[0].splitlines()[0][:200] if errors else "no error reported"
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {first} "
                        f"({len(errors)} parser errors logged)",
                        "try another export.opset, or export.exporter=torchscript")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(export.trt_workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)

    network_input = network.get_input(0)
    shapes = None
    if any(d < 0 for d in network_input.shape):
        shapes = profile_shapes(info, export)
        fixed = tuple(network_input.shape)
        # a dimension the model fixed (channels, a static batch) keeps its value in every shape
        shapes = {k: tuple(f if f >= 0 else s for f, s in zip(fixed, v, strict=True)) for k, v in shapes.items()}
        profile = builder.create_optimization_profile()
        profile.set_shape(network_input.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, True)  # ignore_mismatch: a cache from another GPU is not an error

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path.name} "
                        "(its log above says why)",
                        "raise export.trt_workspace_gb, or narrow export.trt_min_size..trt_max_size")
    build_s = time.perf_counter() - start
    atomic_write_bytes(engine_path, bytes(serialized))
    atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    sidecar = {
        "engine": engine_path.name,
        "source_onnx": onnx_path.name,
        "precision": precision,
        "tensorrt": trt.__version__,
        "gpu": _gpu_name(),
        "profile": {k: list(v) for k, v in shapes.items()} if shapes else None,
        "workspace_gb": export.trt_workspace_gb,
        "build_seconds": round(build_s, 1),
        "metadata": info.replace(precision=precision).to_props(),
    }
    atomic_write_json(engine_sidecar(engine_path), sidecar)
    log.info("built %s in %.1f s: %s", engine_path.name, build_s, json.dumps(sidecar["profile"]))
    return sidecar
