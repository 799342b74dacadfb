"""What an exported model says about itself: classes, colours, preprocessing, provenance.

``diga export`` writes this into the ONNX file's ``metadata_props`` (one string per key, JSON
where the value is structured) and into a JSON side-car next to a TensorRT engine. The runtime
reads it back, so an app needs nothing but the model file. numpy only: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diga.errors import UserError

METADATA_FORMAT = "diga-segmentation/1"
# float: normalised NCHW float32 at the run size; uint8: raw RGB at the run size, normalised in
# the graph; frame: the frame graph (diga.export.frame): raw RGB NHWC of any size in, labels at
# its size out, everything per-pixel in the graph
INPUT_KINDS = ("float", "uint8", "frame")
OUTPUT_KINDS = ("logits", "labels")  # logits: (B, C, H, W) float; labels: (B, H, W) uint8 train ids
FRAME_FLAVOURS = ("onnxruntime", "openvino", "tensorrt")  # diga.export.frame.FLAVOURS
LAYOUTS = ("NCHW", "NHWC")
PRECISIONS = ("fp32", "fp16", "int8")
NATIVE = "native"  # inference_size of a model trained on images at their own size


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split("x"))
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r} is not positive")
    return h, w


@dataclass(frozen=True)
class ModelInfo:
    """The metadata of an exported segmentation model.

    ``input_size`` is the (H, W) the model was exported (and calibrated) at; a static model
    takes only that size, a dynamic one takes any.

    ``inference_size`` is the (H, W) the model was trained and evaluated at (the target
    domain's resize, or ``export.input_size``): the runtime resizes every image to it and
    brings the output back to the image's own size (logits bilinearly before the argmax,
    label maps by nearest neighbour: ``output_resize``). None: the model was trained on images
    at their own size, so each image runs at its own size. ``scale_recorded`` is False for
    files exported before diga recorded the inference size (0.1): they run at each image's
    own size, with a warning.

    ``frame`` names the frame graph's flavour (``diga.export.frame``) for ``input_kind``
    ``frame``: which inputs it takes and where the trained scale is applied.
    """

    class_names: tuple[str, ...]
    palette: np.ndarray  # (C, 3) uint8
    mean: tuple[float, float, float]  # of [0, 1] RGB images
    std: tuple[float, float, float]
    input_kind: str = "float"
    output_kind: str = "logits"
    layout: str = "NCHW"
    channel_order: str = "RGB"
    input_size: tuple[int, int] | None = None
    dynamic: bool = True
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    inference_size: tuple[int, int] | None = None
    scale_recorded: bool = True
    frame: str | None = None

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        for name in ("input_size", "inference_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (int(value[0]), int(value[1])))
        for name, value, allowed in (("input_kind", self.input_kind, INPUT_KINDS),
                                     ("output_kind", self.output_kind, OUTPUT_KINDS),
                                     ("layout", self.layout, LAYOUTS),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if len(palette) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(palette)} colours")
        if (self.input_kind == "frame") != (self.frame is not None):
            raise ValueError("a frame model (input_kind 'frame') names its flavour, and only it")
        if self.frame is not None and self.frame not in FRAME_FLAVOURS:
            raise ValueError(f"frame must be one of {FRAME_FLAVOURS}, got {self.frame!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_confidence(self) -> bool:
        """Whether the model gives logits to make confidence maps from (a frame graph's second
        output, or a logits output)."""
        return self.input_kind == "frame" or self.output_kind == "logits"

    @property
    def output_resize(self) -> str:
        """How an output goes back to the input image's size."""
        if self.input_kind == "frame":
            return ("in the graph: logits bilinear (align_corners) from the feature grid to the "
                    "frame's size, then argmax")
        if self.output_kind == "logits":
            return "bilinear logits, then argmax"
        return "nearest labels"

    def replace(self, **changes: Any) -> ModelInfo:
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return ModelInfo(**values)

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props`` (and the engine side-car)."""
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else ""
        scale = (f"{self.inference_size[0]}x{self.inference_size[1]}" if self.inference_size
                 else NATIVE)
        props = {
            "format": METADATA_FORMAT,
            "class_names": json.dumps(list(self.class_names)),
            "palette": json.dumps(self.palette.tolist()),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "channel_order": self.channel_order,
            "layout": self.layout,
            "input_kind": self.input_kind,
            "output_kind": self.output_kind,
            "input_size": size,
            "dynamic": json.dumps(self.dynamic),
            "precision": self.precision,
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "inference_size": scale,
            "output_resize": self.output_resize,
        }
        if self.frame is not None:
            props["frame"] = self.frame
        if not self.scale_recorded:  # an older file read back: write what it had
            del props["inference_size"], props["output_resize"]
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> ModelInfo:
        """Read what ``to_props`` wrote.

        Raises:
            UserError: the model has no diga metadata, or it is damaged.
        """
        if props.get("format") != METADATA_FORMAT:
            raise UserError(f"{where} carries no diga metadata (class names, mean/std, layout)",
                            "export the model with 'diga export', which embeds them")
        try:
            size = props.get("input_size", "")
            scale = props.get("inference_size")
            return cls(
                class_names=tuple(json.loads(props["class_names"])),
                palette=np.array(json.loads(props["palette"]), dtype=np.uint8),
                mean=tuple(float(v) for v in json.loads(props["mean"])),  # type: ignore[arg-type]
                std=tuple(float(v) for v in json.loads(props["std"])),  # type: ignore[arg-type]
                input_kind=props["input_kind"],
                output_kind=props["output_kind"],
                layout=props["layout"],
                channel_order=props.get("channel_order", "RGB"),
                input_size=_size(size) if size else None,
                dynamic=bool(json.loads(props.get("dynamic", "true"))),
                precision=props.get("precision", "fp32"),
                provenance=json.loads(props.get("provenance", "{}")),
                inference_size=_size(scale) if scale not in (None, NATIVE) else None,
                scale_recorded=scale is not None,
                frame=props.get("frame"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"the diga metadata in {where} is damaged ({type(exc).__name__}: {exc})",
                            "export the model again with 'diga export'") from None
