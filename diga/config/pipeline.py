"""The ``pipeline`` section: what ``diga run`` (and ``diga demo``) does after training."""

from __future__ import annotations

from typing import Literal

from diga.config.types import Section


class PipelineConfig(Section):
    """``diga run CONFIG --out RUN``: the stages a job runs beyond warm-up and self-training."""

    baseline: bool = False
    """Also train the source-only baseline (stage ``source``), for the report's comparison."""
    export: list[Literal["fp16", "int8", "openvino", "trt", "trt_fp32"]] = ["int8"]
    """What the export stage writes beside the float ONNX (the flags of ``diga export``)."""
    bench_backends: list[str] | None = None
    """Backends the bench stage times; None: PyTorch, onnxruntime on the CPU, and OpenVINO,
    TensorRT or onnxruntime's CUDA provider where the export or the device has them."""
