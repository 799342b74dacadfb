"""ONNX -> strongly typed TensorRT engine, for TensorRT 11.x and 10.12+.

TensorRT 11 removed every precision-enabling builder flag (``BuilderFlag.FP16``, ``INT8``, ...),
the implicit INT8 calibrators and ``platform_has_fast_*``: every network is strongly typed and
takes its precision from the ONNX itself (NVIDIA's 10.x -> 11.x migration guide). So each
engine is built from the ONNX of its precision, with no precision flag on either major
version: fp32 from ``model.onnx``, fp16 from ``model.fp16.onnx`` (fp16 weights and activations,
float32 inputs and outputs, by onnxruntime's float16 converter), int8 from ``model.int8.onnx``
(symmetric Q/DQ, zero points 0, as TensorRT requires). On 10.x the network is created with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11.x accepts and ignores it.

The rest: the ONNX parser (every parser error logged), one optimisation profile from
``export.trt_*``, a workspace limit, and a timing cache file reused across builds. Next to the
engine goes a JSON side-car with the model's metadata and what the plan is bound to (TensorRT
version, GPU and compute capability), which ``diga.runtime.Segmenter`` checks before it loads
the plan. TensorRT is imported lazily; without it, or without a GPU, one ``UserError`` says so.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from diga.config import ExportConfig
from diga.errors import UserError
from diga.io import atomic_write_bytes, atomic_write_json, file_sha256
from diga.runtime.metadata import ModelInfo
from diga.runtime.segmenter import engine_sidecar
from diga.runtime.tensorrt_engine import gpu_identity, import_tensorrt, require_gpu

log = logging.getLogger("diga.export")


TESTED_TENSORRT = ((10, 12), (12, 0))  # [10.12, 12): the versions this build path is written for


def check_tensorrt_version(version: str) -> None:
    """Refuse a TensorRT outside [10.12, 12) in one line: older ones predate strong typing as
    the way to choose precision, a 12.x may change the API again."""
    try:
        major_minor = tuple(int(v) for v in version.split(".")[:2])
    except ValueError:
        return  # a development build: let TensorRT itself decide
    lo, hi = TESTED_TENSORRT
    if not lo <= major_minor < hi:
        raise UserError(f"TensorRT {version} is not one diga builds engines with (10.12 or newer "
                        "10.x, or 11.x: strongly typed networks)",
                        "pip install 'tensorrt>=10.12,<12'")


def check_tensorrt_ready() -> Any:
    """The ``tensorrt`` module, after checking that it is installed, of a version this build
    path is written for, and that a GPU is visible."""
    trt = import_tensorrt()
    check_tensorrt_version(trt.__version__)
    require_gpu("building a TensorRT engine")
    return trt


def profile_shapes(info: ModelInfo, export: ExportConfig) -> dict[str, tuple[int, ...]]:
    """min / opt / max input shapes for the optimisation profile, in the model's layout.

    From ``export.trt_*`` (for a frame engine: the frames' sizes), widened where needed to take
    the export size (``info.input_size``), at which parity is checked.
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


def check_trt_source(onnx_path: Path, precision: str) -> None:
    """The ONNX an engine of ``precision`` is built from carries that precision itself.

    fp32 / fp16: float32 inputs and outputs (fp16 also float16 weights); int8: Q/DQ nodes whose
    zero points are all int8 zeros (TensorRT takes symmetric quantisation only).

    Raises:
        UserError: the file is not such a model (e.g. an asymmetric QDQ from another tool).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    float32 = onnx.TensorProto.FLOAT
    io = [v for v in (*graph.input, *graph.output) if v.type.tensor_type.elem_type != float32
          and v.type.tensor_type.elem_type != onnx.TensorProto.UINT8]
    if io:
        raise UserError(f"{onnx_path.name} has a {onnx.TensorProto.DataType.Name(io[0].type.tensor_type.elem_type)} "
                        f"input or output '{io[0].name}'; engines keep float32 (or uint8) I/O",
                        "export it again with 'diga export'")
    weights = {init.name: init for init in graph.initializer}
    if precision == "fp16" and not any(w.data_type == onnx.TensorProto.FLOAT16
                                       for w in weights.values()):
        raise UserError(f"{onnx_path.name} has no float16 weights: a strongly typed fp16 engine "
                        "needs the fp16 ONNX", "build it from model.fp16.onnx (diga export --trt)")
    if precision != "int8":
        return
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        raise UserError(f"{onnx_path.name} has no Q/DQ nodes: a strongly typed int8 engine "
                        "needs the QDQ ONNX", "build it from model.int8.onnx (diga export --int8 --trt)")
    for node in qdq:
        zero = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            continue  # no zero point: 0, symmetric by definition
        values = numpy_helper.to_array(zero)
        hint = "quantise with diga export --int8 (ActivationSymmetric, WeightSymmetric)"
        if values.dtype not in (np.int8, np.int32):  # int32: a bias's zero point
            raise UserError(f"{onnx_path.name}: {node.op_type} '{node.name}' has a {values.dtype} "
                            "zero point; TensorRT takes signed int8 Q/DQ with zero points 0", hint)
        if np.any(values != 0):
            raise UserError(f"{onnx_path.name}: {node.op_type} '{node.name}' has a zero point that "
                            "is not 0; TensorRT takes symmetric int8 Q/DQ only", hint)


def build_engine(onnx_path: Path, engine_path: Path, info: ModelInfo, export: ExportConfig,
                 timing_cache: Path, source_name: str | None = None) -> dict[str, Any]:
    """Build and serialise a strongly typed engine from ``onnx_path``, whose precision
    (``info.precision``: fp32, fp16 or int8) it takes; returns what its side-car JSON says.
    ``source_name``: the shipped file whose network the engine holds (default the ONNX's name).

    Raises:
        UserError: no TensorRT or GPU, an ONNX without the precision it should carry, a parse
            failure (all parser errors are logged first), or a failed build.
    """
    trt = check_tensorrt_ready()
    precision = info.precision
    check_trt_source(onnx_path, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    # strongly typed: required on 10.x for precision from the model, accepted and ignored on
    # 11.x (where every network is); explicit batch is the only mode since 10.0
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
        "precision": precision,
        "strongly_typed": True,
        "precision_source": {"onnx": source_name or onnx_path.name,
                             "sha256": file_sha256(onnx_path)},
        "tensorrt": trt.__version__,
        **gpu_identity(),
        "profile": {k: list(v) for k, v in shapes.items()} if shapes else None,
        "workspace_gb": export.trt_workspace_gb,
        "timing_cache": {"file": timing_cache.name, "sha256": file_sha256(timing_cache)},
        "build_seconds": round(build_s, 1),
        "metadata": info.to_props(),
    }
    atomic_write_json(engine_sidecar(engine_path), sidecar)
    log.info("built %s in %.1f s: %s", engine_path.name, build_s, json.dumps(sidecar["profile"]))
    return sidecar
