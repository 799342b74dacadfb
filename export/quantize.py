"""INT8 (QDQ, calibrated on target-domain images) and FP16 variants of the float ONNX model.

INT8 is onnxruntime's static quantisation in the QDQ format: per-channel symmetric int8
weights, symmetric int8 activations (what TensorRT's explicit quantisation needs, so the same
file is the input for a TensorRT INT8 engine). Activation ranges come from target-domain
TRAIN images, read through the runtime's own preprocessing. The graph's pre- and
post-processing (baked normalisation, the final upsampling, the argmax) stay in float: they
are cheap, and quantising the argmax input would only create ties.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from diga.export.onnx_export import write_model
from diga.runtime.metadata import ModelInfo
from diga.runtime.preprocess import prepare_batch, to_model_size

log = logging.getLogger("diga.export")

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class TargetCalibrationReader(CalibrationDataReader):
    """Feeds calibration images one at a time, prepared exactly as ``Segmenter`` prepares them."""

    def __init__(self, images: list[np.ndarray], info: ModelInfo, input_name: str) -> None:
        self.images, self.info, self.input_name = images, info, input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        image = self.images[self._next]
        self._next += 1
        # at the size the deployed model runs it: the trained scale (or the static size)
        return {self.input_name: prepare_batch([to_model_size(image, self.info)], self.info)}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.images)


def _float_ends(model: onnx.ModelProto) -> list[str]:
    """Nodes before the first Conv (baked preprocessing) and after the last (upsample, argmax)."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    return [n.name for i, n in enumerate(nodes) if (i < convs[0] or i > convs[-1]) and n.name]


def quantize_int8(fp32_path: Path, out_path: Path, images: list[np.ndarray], info: ModelInfo,
                  method: str = "minmax") -> Path:
    """Write the INT8 QDQ model of ``fp32_path`` calibrated on ``images`` (RGB uint8 HWC).

    Args:
        method: ``minmax``, ``entropy`` or ``percentile``. onnxruntime keeps every calibration
            image's activations in memory until the ranges are computed: for large inputs use
            fewer images (``export.calib_images``).
    """
    with tempfile.TemporaryDirectory(prefix="diga-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # shape inference + graph optimisation first: quantisation needs the shapes
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference gives up on some graphs
            log.warning("onnxruntime's quant_pre_process failed (%s: %s); quantising the model as "
                        "exported", type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            prepared = Path(fp32_path)
        model = onnx.load(str(prepared))
        quantized = Path(tmp) / "int8.onnx"
        # the histogram calibrators print progress to stdout: keep it off the user's terminal
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            _quantize(prepared, quantized, model, images, info, method)
        log.debug("calibration: %s", chatter.getvalue().strip())
        proto = onnx.load(str(quantized))
    write_model(proto, out_path, info.replace(precision="int8"),
                doc=f"int8 QDQ, {method} calibration on {len(images)} target-domain images")
    return out_path


def _quantize(prepared: Path, quantized: Path, model: onnx.ModelProto, images: list[np.ndarray],
              info: ModelInfo, method: str) -> None:
    input_name = model.graph.input[0].name
    quantize_static(
        str(prepared), str(quantized),
        calibration_data_reader=TargetCalibrationReader(images, info, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[method],
        nodes_to_exclude=_float_ends(model),
        extra_options={
            "ActivationSymmetric": True,  # TensorRT takes zero points of 0 only
            "WeightSymmetric": True,
        },
    )


def convert_fp16(fp32_path: Path, out_path: Path, info: ModelInfo) -> Path:
    """Write an fp16 copy of the model: fp16 weights and activations, float32 inputs/outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(fp32_path))
    # onnxruntime's default block list keeps ops without fp16 kernels (Resize among them) in fp32
    half = convert_float_to_float16(model, keep_io_types=True)
    OnnxModel.graph_topological_sort(half.graph)  # the converter appends its I/O casts at the end
    write_model(half, out_path, info.replace(precision="fp16"), doc="fp16 weights and activations, "
                "float32 I/O")
    return out_path
