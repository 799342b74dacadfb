"""The deployment sections of the config: ``export`` (``diga export``) and ``bench``
(``diga bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from diga.config.types import Section, Size


class ExportConfig(Section):
    opset: int = Field(18, ge=18)
    """ONNX opset of the exported graphs (the frame graph's Resize takes antialias from opset
    18)."""
    dynamic: bool = True
    """Dynamic batch, height and width axes; False: a fixed shape, batch 1 at the inference
    size (diga export --static)."""
    input_size: Size | None = None
    """The size the deployed model runs every image at (recorded in every exported file as its
    inference size). None: the target domain's resize (data.target.resize), the scale the
    model was trained and evaluated at; with no resize either, each image's own size."""
    calib_images: int = Field(32, ge=1)
    """Target train images that calibrate the INT8 quantisation."""
    calib_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """onnxruntime's calibration method for the INT8 activation ranges."""
    int8_float: list[Literal["layer_norm", "attention"]] = []
    """Operations the INT8 model leaves in float. "layer_norm" (LayerNormalization),
    "attention" (the MatMuls of two activations: scores and their weighting of the values,
    around the softmax)."""
    openvino_int8: Literal["qdq", "nncf"] = "qdq"
    """How the INT8 OpenVINO IR is made. "qdq": converted from the QDQ ONNX (its
    calibration); "nncf": NNCF's own quantisation of the float IR on the same images."""
    parity_images: int = Field(8, ge=1)
    """Target val images every exported file is compared with PyTorch on (parity.json)."""
    trt_min_size: Size = (256, 512)
    """Smallest frame (HxW) an engine takes. The frames an engine takes (its optimisation
    profile): any size in [min, max], fastest at opt (the camera's); the network inside runs at
    the inference size whatever the frame."""
    trt_opt_size: Size = (1024, 2048)
    """Frame size (HxW) an engine is fastest at: the camera's (see trt_min_size)."""
    trt_max_size: Size = (2048, 4096)
    """Largest frame (HxW) an engine takes (see trt_min_size)."""
    trt_max_batch: int = Field(1, ge=1)
    """Largest batch an engine takes (its profile is optimised for half of it)."""
    trt_workspace_gb: float = Field(4.0, gt=0)
    """GPU memory (GiB) TensorRT's builder may use for its workspace."""
    trt_timing_cache: Path | None = None
    """TensorRT's timing cache file, reused across builds; None: <export dir>/trt_timing.cache."""
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    """torch's ONNX exporter; auto: dynamo, TorchScript if it fails."""
    min_agreement_fp16: float = Field(99.0, ge=0, le=100)
    """Pixel agreement (%) of the fp16 ONNX with PyTorch required to build its engine."""
    min_agreement: float = Field(99.9, ge=0, le=100)
    """Pixel agreement (%) of the fp32 ONNX with PyTorch required."""
    eval_images: int | None = Field(None, ge=1)
    """Target val images of the int8 / fp16 mIoU; None: all."""


class BenchConfig(Section):
    """``diga bench``: how long and on what each (model, backend) row is measured."""

    warmup: int = Field(3, ge=0)
    """Untimed runs before every timed loop (allocations, compile)."""
    time_budget_s: float = Field(3.0, gt=0)
    """Seconds each timed loop runs about (within min_iters and max_iters)."""
    min_iters: int = Field(5, ge=1)
    """Fewest runs of a timed loop, whatever its time budget."""
    max_iters: int = Field(10000, ge=1)
    """Most runs of a timed loop, whatever its time budget."""
    batch_sizes: list[int] = [1]
    """Batches the throughput (images/s) is measured at; latency is always at batch 1."""
    input_size: Size | None = None
    """Run every model at this (H, W), for latency and mIoU. None: each model at its trained
    scale (an exported file's inference size; a checkpoint's export.input_size / target
    resize)."""
    max_images: int | None = Field(None, ge=1)
    """First N target val images for mIoU; None: all."""
    matmul_size: int = Field(1024, ge=64)
    """n of the n x n float32 matmuls timed for the device's peak."""

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError(f"need one or more batch sizes >= 1, got {v}")
        return v
