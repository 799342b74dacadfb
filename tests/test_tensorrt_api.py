"""TensorRT code checked without TensorRT: an AST scan of every module that uses it against the
names NVIDIA's 10.x -> 11.x migration guide lists as removed and the 11.x API reference
(``tests/data/tensorrt_11_api.json``, with where each came from); and what runs on the CPU of
the strongly typed build path (source checks, version floor, plan compatibility)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from diga.errors import UserError
from diga.export.tensorrt_build import check_tensorrt_version, check_trt_source
from diga.runtime.tensorrt_engine import plan_mismatch

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "tests" / "data" / "tensorrt_11_api.json").read_text())
REMOVED = set(API["removed"]) - {"_note"}
KNOWN = set(API["api_11"]) - {"_note"}

# what the TensorRT objects in our modules are called, and what the calls that make them return
TYPES = {
    "trt": "<module>", "builder": "Builder", "network": "INetworkDefinition",
    "parser": "OnnxParser", "config": "IBuilderConfig", "profile": "IOptimizationProfile",
    "network_input": "ITensor", "cache": "ITimingCache", "runtime": "Runtime",
    "engine": "ICudaEngine", "context": "IExecutionContext", "logger": "Logger",
}
RETURNS = {"IBuilderConfig.get_timing_cache": "ITimingCache",
           "IBuilderConfig.create_timing_cache": "ITimingCache"}


def tensorrt_names(source: str) -> set[str]:
    """Every TensorRT name a module uses: each ``trt.X`` / ``trt.X.Y`` chain, and each member
    of a TensorRT object (known by its variable or ``self.`` attribute name, ``TYPES``), in the
    top-level functions and classes that touch the ``trt`` module (so a pycuda ``context``
    elsewhere is not taken for TensorRT's)."""

    def type_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return TYPES.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            return TYPES.get(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = type_of(node.func.value)
            return RETURNS.get(f"{owner}.{node.func.attr}") if owner else None
        return None

    def uses_trt(node: ast.AST) -> bool:
        return any((isinstance(n, ast.Name) and n.id == "trt") or
                   (isinstance(n, ast.Attribute) and n.attr == "trt") for n in ast.walk(node))

    found: set[str] = set()
    for top in ast.parse(source).body:
        if not uses_trt(top):
            continue
        for node in ast.walk(top):
            if not isinstance(node, ast.Attribute):
                continue
            attrs, value = [node.attr], node.value
            while type_of(value) is None and isinstance(value, ast.Attribute):
                attrs.insert(0, value.attr)
                value = value.value
            owner = type_of(value)
            if owner == "<module>":
                found.add(".".join(attrs))
            elif owner is not None and len(attrs) == 1:
                found.add(f"{owner}.{attrs[0]}")
    return found


def tensorrt_modules() -> list[Path]:
    files = [p for folder in ("diga", "export", "cli", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    return sorted(p for p in files if "import_tensorrt" in p.read_text() or
                  "import tensorrt" in p.read_text())


def test_the_scan_sees_our_tensorrt_modules():
    names = {p.relative_to(ROOT).as_posix() for p in tensorrt_modules()}
    assert {"export/tensorrt_build.py", "diga/runtime/tensorrt_engine.py"} <= names
    used = tensorrt_names((ROOT / "export" / "tensorrt_build.py").read_text())
    assert {"Builder.create_network", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
            "IBuilderConfig.set_timing_cache", "ITimingCache.serialize"} <= used


def test_the_scan_catches_what_tensorrt_11_removed():
    """What export/tensorrt_build.py did before this check (TensorRT 10 weak typing)."""
    old = ("def build(trt, builder, calibrator):\n"
           "    config = builder.create_builder_config()\n"
           "    config.set_flag(trt.BuilderFlag.FP16)\n"
           "    config.set_flag(trt.BuilderFlag.INT8)\n"
           "    network = builder.create_network(\n"
           "        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))\n"
           "    fast = builder.platform_has_fast_fp16\n"
           "    config.int8_calibrator = calibrator\n")
    used = tensorrt_names(old)
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "Builder.platform_has_fast_fp16",
            "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "IBuilderConfig.int8_calibrator",
            "IBuilderConfig.set_flag"} <= used
    assert used & REMOVED == {"BuilderFlag.FP16", "BuilderFlag.INT8",
                              "Builder.platform_has_fast_fp16", "IBuilderConfig.int8_calibrator",
                              "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"}


@pytest.mark.parametrize("module", tensorrt_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_removed_and_only_documented_tensorrt_names(module):
    used = tensorrt_names(module.read_text())
    assert not used & REMOVED, f"{module.name} uses names TensorRT 11 removed: {used & REMOVED}"
    unknown = used - KNOWN
    assert not unknown, (f"{module.name} uses TensorRT names not in tests/data/tensorrt_11_api.json "
                         f"(check NVIDIA's 11.x API reference, then add them with the source): "
                         f"{sorted(unknown)}")


# ------------------------------------------------------------------ the build path's CPU parts


def _qdq_model(path: Path, zero_point: int, zp_type=TensorProto.INT8) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             helper.make_tensor("z", zp_type, [], [zero_point])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq0")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_engine_sources_must_carry_their_precision(tmp_path):
    check_trt_source(_qdq_model(tmp_path / "sym.onnx", 0), "int8")
    with pytest.raises(UserError, match="has a zero point that is not 0; TensorRT takes symmetric"):
        check_trt_source(_qdq_model(tmp_path / "asym.onnx", 3), "int8")
    with pytest.raises(UserError, match="uint8 zero point"):
        check_trt_source(_qdq_model(tmp_path / "u8.onnx", 0, TensorProto.UINT8), "int8")
    with pytest.raises(UserError, match="no float16 weights: a strongly typed fp16 engine"):
        check_trt_source(tmp_path / "sym.onnx", "fp16")


def test_exported_fp16_and_int8_onnx_are_valid_engine_sources(tmp_path):
    """Our own converter's fp16 ONNX (float32 I/O) and QDQ ONNX (symmetric) pass the checks
    the engine build makes before it starts; the float ONNX is no fp16 or int8 source."""
    import torch

    from diga.config import load_config
    from diga.export.onnx_export import export_onnx, model_info
    from diga.export.quantize import convert_fp16, quantize_int8
    from diga.models import build_model

    cfg = load_config("demo", ["data.builtin.size=32x64", "run.device=cpu"])
    info = model_info(cfg, {}, (32, 64), dynamic=True, bake_preprocess=False, argmax=False)
    torch.manual_seed(0)
    fp32 = export_onnx(build_model("deeplabv2_tiny", 19).eval(), info, tmp_path / "model.onnx").path
    fp16 = convert_fp16(fp32, tmp_path / "model.fp16.onnx", info)
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8) for _ in range(2)]
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx", calib, info)
    check_trt_source(fp32, "fp32")
    check_trt_source(fp16, "fp16")
    check_trt_source(int8, "int8")
    with pytest.raises(UserError, match="no Q/DQ nodes"):
        check_trt_source(fp32, "int8")
    with pytest.raises(UserError, match="no float16 weights"):
        check_trt_source(fp32, "fp16")


def test_tensorrt_version_floor():
    for ok in ("10.12.0.36", "10.14.1", "11.4.0"):
        check_tensorrt_version(ok)
    for old in ("10.3.0", "8.6.1", "12.0.0"):
        with pytest.raises(UserError, match=f"TensorRT {old} is not one diga builds engines with"):
            check_tensorrt_version(old)


def test_a_plan_from_another_tensorrt_or_gpu_is_refused():
    sidecar = {"tensorrt": "11.4.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    here = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    assert plan_mismatch(sidecar, "11.4.0", here) is None
    assert plan_mismatch(sidecar, "10.14.1", here) == \
        "was built by TensorRT 11.4.0; this is TensorRT 10.14.1"
    other = {"gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert plan_mismatch(sidecar, "11.4.0", other) == (
        "was built for NVIDIA H200 (compute capability 9.0); this is NVIDIA L4 (compute "
        "capability 8.9)")
    assert plan_mismatch({"tensorrt": "11.4.0"}, "11.4.0", other) is None  # older side-car
