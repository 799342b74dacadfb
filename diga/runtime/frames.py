"""Running a frame graph (``diga.export.frame``): the frames go in as they are, labels come out.

The graph resizes each frame to the run size, runs the network and computes labels at the
frame's size itself, so the host only stacks frames of one size into a batch and reads the
labels back. Its second output, the feature-grid logits, is fetched only when an app asks for
confidence maps or labels at another size than the frame's; they are upsampled here by the
graph's own rule. numpy and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from diga.errors import UserError
from diga.runtime.metadata import ModelInfo
from diga.runtime.prediction import Prediction, frame_prediction
from diga.runtime.preprocess import resize_rgb

IMAGE, RUN_SIZE, OUT_SIZE = "image", "run_size", "out_size"  # diga.export.frame's names
LABELS, LOGITS = "labels", "logits"


class NamedModel(Protocol):
    """A loaded model that takes named inputs and returns the named outputs asked for."""

    def run_named(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]: ...


def frame_feeds(info: ModelInfo, frames: Sequence[np.ndarray], run_size: tuple[int, int],
                out_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The graph's inputs for frames of one size (RGB uint8 (H, W, 3)), run at ``run_size``.

    ``onnxruntime``: the frames and the run size; ``openvino``: the frames resized to the run
    size with Pillow (its CPU plugin has no antialiased resize) and the labels' size;
    ``tensorrt``: the frames (the engine's run size is baked in).
    """
    if info.frame == "openvino":
        resized = np.stack([resize_rgb(f, run_size) for f in frames])
        return {IMAGE: resized, OUT_SIZE: np.asarray(out_size, np.int64)}
    feeds = {IMAGE: np.ascontiguousarray(np.stack(frames))}
    if info.frame == "onnxruntime":
        feeds[RUN_SIZE] = np.asarray(run_size, np.int64)
    return feeds


def check_engine_run_size(info: ModelInfo, frame_size: tuple[int, int],
                          run_size: tuple[int, int], where: str) -> None:
    """A TensorRT frame engine runs at the run size it was built with: refuse another."""
    built = info.inference_size or tuple(frame_size)
    if tuple(run_size) != tuple(built):
        raise UserError(f"{where} runs frames at its trained {built[0]}x{built[1]}, not at "
                        f"{run_size[0]}x{run_size[1]}",
                        "drop the size option, or use the .onnx model for other run sizes")


def segment_frames(model: NamedModel, info: ModelInfo, frames: Sequence[np.ndarray],
                   run_size: tuple[int, int], out_size: tuple[int, int] | None,
                   uncertainty: bool, where: str) -> list[Prediction]:
    """Predictions for frames of one size (one batch), at ``out_size`` (None: the frames')."""
    frame_size = tuple(frames[0].shape[:2])
    want = tuple(out_size or frame_size)
    if info.frame == "tensorrt":
        check_engine_run_size(info, frame_size, run_size, where)  # type: ignore[arg-type]
    # the openvino flavour makes labels at out_size itself; the others at the frame's size
    on_host = want != frame_size and info.frame != "openvino"
    names = [LABELS, LOGITS] if uncertainty or on_host else [LABELS]
    outputs = model.run_named(frame_feeds(info, frames, run_size, want), names)  # type: ignore[arg-type]
    logits: Any = outputs[1] if len(outputs) > 1 else [None] * len(frames)
    return [frame_prediction(labels, grid, want, uncertainty)  # type: ignore[arg-type]
            for labels, grid in zip(outputs[0], logits, strict=True)]
