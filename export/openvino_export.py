"""OpenVINO IR from our ONNX: ``openvino.convert_model``, with the metadata in the IR's rt_info.

The IRs are frame graphs of the ``openvino`` flavour (``diga.export.frame``). The float IR's
network is the float ONNX's; the INT8 IR's the symmetric QDQ network of ``model.int8.onnx``,
whose QuantizeLinear / DequantizeLinear pairs OpenVINO turns into FakeQuantize and runs with
int8 kernels: the same calibration (the same target images, the same scales) as onnxruntime's.
"""

from __future__ import annotations

from pathlib import Path

from diga.runtime.metadata import ModelInfo
from diga.runtime.openvino_model import import_openvino, write_props


def export_openvino(onnx_path: Path, xml_path: Path, info: ModelInfo) -> Path:
    """Convert ``onnx_path`` to ``xml_path`` (+ ``.bin``) with ``info`` in rt_info["diga"].

    Weights keep their precision (no fp16 compression): the IR computes what the ONNX does.
    """
    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    write_props(model, info.to_props())
    save_ir(model, xml_path)
    return xml_path


def save_ir(model: object, xml_path: Path) -> None:
    """``openvino.save_model`` into a temporary folder, then the .bin and the .xml (last: what
    readers open) written atomically through Python: OpenVINO's C++ writer reports a full disk
    as a RuntimeError without its errno, Python's as an ``OSError`` (one line, ``write_error``),
    and no half-written IR is left where a reader would take it as complete."""
    import tempfile

    from diga.io import atomic_write_bytes

    ov = import_openvino()
    with tempfile.TemporaryDirectory(prefix="diga-ir-") as tmp:
        staged = Path(tmp) / xml_path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        atomic_write_bytes(xml_path.with_suffix(".bin"), staged.with_suffix(".bin").read_bytes())
        atomic_write_bytes(xml_path, staged.read_bytes())


def quantize_openvino_nncf(xml_path: Path, out_path: Path, images: list, info: ModelInfo) -> Path:
    """INT8 IR by NNCF's post-training quantisation of the float IR, calibrated on ``images``
    (RGB uint8) prepared exactly as ``Segmenter`` prepares them (the ONNX INT8's images).

    Raises:
        UserError: NNCF is not installed.
    """
    try:
        import nncf
    except ImportError:
        from diga.errors import UserError

        raise UserError("export.openvino_int8=nncf needs NNCF, which is not installed",
                        "pip install nncf, or use export.openvino_int8=qdq") from None
    from diga.runtime.frames import frame_feeds
    from diga.runtime.openvino_model import shared_core
    from diga.runtime.preprocess import model_input_size

    model = shared_core().read_model(str(xml_path))
    # the frame graph's inputs, as the runtime feeds them: the frame resized to the run size
    batches = [frame_feeds(info, [image], model_input_size(info, image.shape[:2]), image.shape[:2])
               for image in images]
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              preset=nncf.QuantizationPreset.PERFORMANCE)  # symmetric, as QDQ
    write_props(quantized, info.to_props())
    save_ir(quantized, out_path)
    return out_path
