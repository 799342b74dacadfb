"""The torch-free runtime: run an exported model (.onnx / .xml / .engine) on images and video.

    from diga.runtime import Segmenter, class_report, colorize
    seg = Segmenter("model.onnx")            # size="trained": runs at the trained scale
    labels = seg(image)                      # RGB uint8 (H, W, 3) or PIL -> (H, W) uint8
    color = colorize(labels, seg.info.palette)
    for frame, pred in seg.stream("drive.mp4"):   # or a webcam index, a URL, any image iterable
        report = class_report(pred, seg.info.class_names)

Imports numpy, Pillow and onnxruntime (TensorRT and pycuda / cuda-python only for engines),
never torch: ``tests/test_runtime.py`` proves it in a subprocess.
"""

from diga.runtime.metadata import ModelInfo
from diga.runtime.prediction import Prediction, class_report
from diga.runtime.preprocess import model_input_size, prepare_batch, to_model_size, to_rgb_uint8
from diga.runtime.segmenter import (
    BACKENDS,
    HostPathWarning,
    RuntimeFallbackWarning,
    ScaleWarning,
    Segmenter,
    SegmenterWarning,
    check_backend,
    colorize,
    engine_sidecar,
    overlay,
)

__all__ = [
    "BACKENDS",
    "HostPathWarning",
    "ModelInfo",
    "Prediction",
    "RuntimeFallbackWarning",
    "ScaleWarning",
    "Segmenter",
    "SegmenterWarning",
    "check_backend",
    "class_report",
    "colorize",
    "engine_sidecar",
    "overlay",
    "model_input_size",
    "prepare_batch",
    "to_model_size",
    "to_rgb_uint8",
]
