"""The deployment sections of the config: ``export`` (``diga export``) and ``bench``
(``diga bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from diga.config.types import Section, Size


class ExportConfig(Section):
    opset: int = Field(18, ge=18)  # the frame graph's Resize takes antialias from opset 18
    dynamic: bool = True
    # The size the deployed model runs every image at (recorded in every exported file as its
    # inference size). None: the target domain's resize (data.target.resize), the scale the
    # model was trained and evaluated at; with no resize either, each image's own size.
    input_size: Size | None = None
    calib_images: int = Field(32, ge=1)
    calib_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # what INT8 leaves in float: "layer_norm" (LayerNormalization), "attention" (the MatMuls of
    # two activations: scores and their weighting of the values, around the softmax)
    int8_float: list[Literal["layer_norm", "attention"]] = []
    # the INT8 IR: converted from the QDQ ONNX (its calibration), or NNCF's own quantisation
    # of the float IR on the same images
    openvino_int8: Literal["qdq", "nncf"] = "qdq"
    parity_images: int = Field(8, ge=1)
    # the frames an engine takes (its optimisation profile): any size in [min, max], fastest
    # at opt (the camera's); the network inside runs at the inference size whatever the frame
    trt_min_size: Size = (256, 512)
    trt_opt_size: Size = (1024, 2048)
    trt_max_size: Size = (2048, 4096)
    trt_max_batch: int = Field(1, ge=1)
    trt_workspace_gb: float = Field(4.0, gt=0)
    trt_timing_cache: Path | None = None  # None: <export dir>/trt_timing.cache, reused across builds
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"  # auto: dynamo, TorchScript if it fails
    min_agreement_fp16: float = Field(99.0, ge=0, le=100)  # fp16 ONNX vs PyTorch (%) to build its engine
    min_agreement: float = Field(99.9, ge=0, le=100)  # fp32 ONNX vs PyTorch pixel agreement (%) required
    eval_images: int | None = Field(None, ge=1)  # target-val images for the int8/fp16 mIoU; None: all


class BenchConfig(Section):
    """``diga bench``: how long and on what each (model, backend) row is measured."""

    warmup: int = Field(3, ge=0)  # untimed runs before every timed loop (allocations, compile)
    time_budget_s: float = Field(3.0, gt=0)  # each timed loop runs about this long ...
    min_iters: int = Field(5, ge=1)  # ... but at least this many times
    max_iters: int = Field(10000, ge=1)  # ... and at most this many
    batch_sizes: list[int] = [1]  # throughput (images/s) at each; latency is always at batch 1
    # Run every model at this (H, W), for latency and mIoU. None: each model at its trained
    # scale (an exported file's inference size; a checkpoint's export.input_size / target resize)
    input_size: Size | None = None
    max_images: int | None = Field(None, ge=1)  # first N target val images for mIoU; None: all
    matmul_size: int = Field(1024, ge=64)  # n of the n x n float32 matmuls timed for the peak

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError(f"need one or more batch sizes >= 1, got {v}")
        return v
