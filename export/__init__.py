"""Export: ONNX (float, fp16, int8 QDQ) and TensorRT engines, each checked against PyTorch.

Modules, one stage each: ``formats`` (the table of formats and backends), ``onnx_export``,
``parity``, ``quantize``, ``tensorrt_build``, and ``pipeline`` (``diga export`` as one call).
Importing this package is light; the stages load torch / onnxruntime / TensorRT when used.
"""

from __future__ import annotations

from typing import Any

from diga.export.formats import (
    BENCH_BACKENDS,
    FORMATS,
    ExportFormat,
    format_of_file,
    formats_for_flags,
)

__all__ = [
    "BENCH_BACKENDS",
    "FORMATS",
    "ExportFormat",
    "ExportOptions",
    "export_checkpoint",
    "format_of_file",
    "formats_for_flags",
]


def __getattr__(name: str) -> Any:
    # the pipeline imports torch: load it on first use, not on `import diga.export`
    if name in ("ExportOptions", "export_checkpoint", "ExportSummary"):
        from diga.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'diga.export' has no attribute {name!r}")
