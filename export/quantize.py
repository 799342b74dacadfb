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


def float_nodes(model: onnx.ModelProto, keep: list[str] | tuple[str, ...]) -> list[str]:
    """Names of the nodes ``export.int8_float`` keeps out of INT8 (no QDQ group around them:
    they compute in float on the dequantized tensors of the layers before them).

    ``layer_norm``: every LayerNormalization. ``attention``: every MatMul of two activations
    (attention scores, and their weighting of the values; a MatMul with a weight is a linear
    layer and stays INT8), and every node on the path from a scores MatMul to its Softmax (the
    scaling, the mask, the Softmax itself): quantising the scaling's input would quantise the
    scores MatMul's output, and a MatMul between DequantizeLinear inputs and a QuantizeLinear
    output runs as an INT8 kernel whatever the exclusion list says.
    """
    weights = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    if "layer_norm" in keep:
        names += [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    if "attention" in keep:
        fixed = weights | constants
        pairs = [n for n in model.graph.node
                 if n.op_type == "MatMul" and not any(i in fixed for i in n.input)]
        names += [n.name for n in pairs]
        pair_names = {n.name for n in pairs}
        for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
            path, node = [softmax], softmax
            while node is not None and node.name not in pair_names:
                moving = [i for i in node.input if i not in fixed and i in producer]
                node = producer[moving[0]] if len(moving) == 1 else None
                if node is not None and node.op_type not in _SCORE_PATH | {"MatMul"}:
                    node = None
                if node is not None:
                    path.append(node)
            if node is not None:  # the path reached a scores MatMul
                names += [n.name for n in path if n.name not in pair_names]
    return names


# what lies between attention scores and their Softmax: scaling, masking, shape changes
_SCORE_PATH = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Reshape", "Transpose"}


def quantize_int8(fp32_path: Path, out_path: Path, images: list[np.ndarray], info: ModelInfo,
                  method: str = "minmax", keep_float: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the INT8 QDQ model of ``fp32_path`` calibrated on ``images`` (RGB uint8 HWC).

    Args:
        method: ``minmax``, ``entropy`` or ``percentile``. onnxruntime keeps every calibration
            image's activations in memory until the ranges are computed: for large inputs use
            fewer images (``export.calib_images``).
        keep_float: ``export.int8_float`` (``float_nodes``).
    """
    fp32_path = Path(fp32_path).resolve()
    with tempfile.TemporaryDirectory(prefix="diga-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # shape inference + graph optimisation first: quantisation needs the shapes. ONNX's
            # own shape inference is enough for the exporter's graphs (the same QDQ model, the
            # same outputs as onnxruntime's symbolic inference, which takes 36 s on HRNet and,
            # where it gives up, saves the model and its weights into the working directory);
            # run in a temporary folder all the same.
            with contextlib.chdir(tmp):
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # symbolic shape inference gives up on some graphs
            log.warning("onnxruntime's quant_pre_process failed (%s: %s); quantising the model as "
                        "exported", type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            prepared = Path(fp32_path)
        model = onnx.load(str(prepared))
        quantized = Path(tmp) / "int8.onnx"
        # the histogram calibrators print progress to stdout: keep it off the user's terminal
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            _quantize(prepared, quantized, model, images, info, method, keep_float)
        log.debug("calibration: %s", chatter.getvalue().strip())
        proto = onnx.load(str(quantized))
    kept = f"; in float: {', '.join(keep_float)}" if keep_float else ""
    write_model(proto, out_path, info.replace(precision="int8"),
                doc=f"int8 QDQ, {method} calibration on {len(images)} target-domain images{kept}")
    return out_path


def _quantize(prepared: Path, quantized: Path, model: onnx.ModelProto, images: list[np.ndarray],
              info: ModelInfo, method: str, keep_float: list[str] | tuple[str, ...]) -> None:
    input_name = model.graph.input[0].name
    quantize_static(
        str(prepared), str(quantized),
        calibration_data_reader=TargetCalibrationReader(images, info, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[method],
        nodes_to_exclude=_float_ends(model) + float_nodes(model, keep_float),
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
