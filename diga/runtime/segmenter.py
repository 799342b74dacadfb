"""``Segmenter``: an exported model (.onnx, .xml or .engine) behind one call, image in, labels out.

    seg = Segmenter("runs/demo/export/model.onnx")        # backend="auto"
    labels = seg(rgb_uint8_array_or_pil_image)            # (H, W) uint8 train ids
    color = colorize(labels, seg.info.palette)

``.onnx`` runs through onnxruntime (CPU, CUDA or TensorRT execution provider), ``.xml`` (an
OpenVINO IR) through OpenVINO on the CPU, ``.engine`` through TensorRT. The metadata inside the
model gives the preprocessing, class names and palette. No torch: an app needs numpy, Pillow
and onnxruntime (or OpenVINO, or TensorRT) alone.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diga.errors import UserError
from diga.runtime.metadata import ModelInfo
from diga.runtime.prediction import Prediction, prediction_from_output
from diga.runtime.preprocess import (
    NATIVE,
    TRAINED,
    RunSize,
    check_run_size,
    model_input_size,
    prepare_batch,
    resize_rgb,
    to_rgb_uint8,
)
from diga.runtime.video import Frame, open_video

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "openvino")
MODEL_FILE_SUFFIXES = (".onnx", ".xml", ".engine", ".plan", ".trt")  # what Segmenter runs
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_BACKEND = {CPU: "cpu", CUDA: "cuda", TRT: "tensorrt"}


class SegmenterWarning(UserWarning):
    """Something an app should know about how its model runs (the CLI prints it as one line)."""


class RuntimeFallbackWarning(SegmenterWarning):
    """``backend="auto"`` could not get the accelerator it tried and fell back."""


class ScaleWarning(SegmenterWarning):
    """The model file records no inference size (an older export): images run at their own size."""


class HostPathWarning(SegmenterWarning):
    """The model file holds the network alone (an older export, or ``--logits``): frames are
    resized and labels made on the host, several times the network's own time at camera
    resolution; the frame graph does both in the graph."""


def check_backend(backend: str) -> str:
    """Validate a backend name (one clear error with a did-you-mean)."""
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, BACKENDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(BACKENDS)}"
        raise UserError(f"unknown backend '{backend}'", hint)
    return backend


def engine_sidecar(path: Path) -> Path:
    """Where an engine's metadata lives: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    return Path(f"{path}.json")


class _OrtModel:
    """An onnxruntime session that knows which execution provider it really got."""

    def __init__(self, path: Path, backend: str) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}.get(backend)
        if backend == "auto":
            wanted = [CUDA, CPU] if CUDA in available else [CPU]
        elif wanted[0] not in available:
            raise UserError(
                f"backend '{backend}' needs onnxruntime's {wanted[0]}, which this onnxruntime "
                f"{ort.__version__} lacks (it has {', '.join(available)})",
                "pip install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --backend cpu")
        providers: list[Any] = list(wanted)
        if providers[0] == TRT:
            # engines are cached next to the model: the first run builds, later runs load. No
            # trt_fp16_enable / trt_int8_enable: they are the weak-typing builder flags that
            # TensorRT 11 removed; without them onnxruntime builds a strongly typed network, so
            # the precision comes from the model itself (fp16 weights, or int8 Q/DQ scales),
            # as for diga's own engines
            cache = str(path.parent / ".ort_trt_cache")
            providers[0] = (TRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache})
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported below
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's InvalidProtobuf / Fail / InvalidGraph / NotImplemented
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"cannot load ONNX model {path}: {first}",
                            "is it a complete ONNX file? export it again with 'diga export'") from None
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        if self.provider != wanted[0]:
            what = (f"asked onnxruntime for {wanted[0]} but the session got {self.provider} "
                    "(no usable GPU, or CUDA/cuDNN libraries missing)")
            if backend != "auto":
                raise UserError(what, "check the GPU driver and CUDA libraries, or use --backend cpu")
            warnings.warn(f"{what}; running on {self.provider}", RuntimeFallbackWarning, stacklevel=3)
        self.backend = PROVIDER_BACKEND.get(self.provider, self.provider)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch: int | None = batch_dim if isinstance(batch_dim, int) else None
        self.props = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def run_named(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The outputs asked for (onnxruntime computes no node that none of them needs)."""
        return self.session.run(outputs, feeds)

    def close(self) -> None:
        self.session = None


class Segmenter:
    """A semantic segmentation model file behind one call.

    Args:
        path: an ``.onnx`` (onnxruntime), ``.xml`` (OpenVINO IR, CPU) or ``.engine``
            (TensorRT) written by ``diga export``.
        backend: ``auto`` (CUDA when onnxruntime has it, else CPU; a warning if a GPU provider
            was tried and not obtained), ``cpu``, ``cuda`` or ``tensorrt`` (onnxruntime's
            TensorRT provider for ``.onnx``; ``.engine`` files always run on TensorRT), or
            ``openvino`` (``.xml`` files run on OpenVINO's CPU plugin with auto and cpu too).
        size: the size each image runs at. ``trained`` (the default): the size the model was
            trained and evaluated at (``info.inference_size``), so a raw camera frame is
            labelled at the scale ``diga eval`` measured; ``native``: the image's own size;
            or an explicit (H, W). Labels always come back at the image's own size (or
            ``out_size``). A static model runs at its export size only.
        hint: OpenVINO's performance hint for an ``.xml``: ``latency`` (one stream on the
            physical cores) or ``throughput`` (several streams).
    """

    def __init__(self, path: str | Path, backend: str = "auto", size: RunSize = TRAINED,
                 hint: str = "latency") -> None:
        self.path = Path(path)
        check_backend(backend)
        if not self.path.is_file():
            raise UserError(f"model not found: {self.path}", "give an .onnx, .xml or .engine "
                            "file written by 'diga export'")
        suffix = self.path.suffix.lower()
        if suffix == ".onnx":
            self._model: Any = _OrtModel(self.path, backend)
            self.backend, self.provider = self._model.backend, self._model.provider
            self.info = ModelInfo.from_props(self._model.props, str(self.path))
        elif suffix == ".xml":
            if backend not in ("auto", "cpu", "openvino"):
                raise UserError(f"an OpenVINO IR runs on OpenVINO's CPU plugin, not on backend "
                                f"'{backend}'", "use --backend openvino (or auto / cpu)")
            from diga.runtime.openvino_model import OpenVINOModel

            self._model = OpenVINOModel(self.path, hint)
            self.backend, self.provider = self._model.backend, self._model.provider
            self.info = ModelInfo.from_props(self._model.props, str(self.path))
        elif suffix in (".engine", ".plan", ".trt"):
            if backend in ("cpu", "cuda"):
                raise UserError(f"a TensorRT engine runs on TensorRT, not on backend '{backend}'",
                                "use --backend tensorrt (or auto), or the .onnx model for CPU/CUDA")
            self.info, sidecar = self._read_sidecar()
            from diga.runtime.tensorrt_engine import TensorRTEngine, check_plan

            check_plan(self.path, sidecar)  # another TensorRT version or GPU: one line, no load
            self._model = TensorRTEngine(self.path)
            self.backend, self.provider = "tensorrt", "TensorRT"
        else:
            raise UserError(f"cannot run {self.path.name}: unknown model file type '{suffix}'",
                            "give an .onnx, .xml or .engine file (a run directory or checkpoint "
                            "runs through 'diga predict' / 'diga eval' with PyTorch)")
        self.size = check_run_size(self.info, size, str(self.path))
        if self.info.frame == "tensorrt" and size != TRAINED and not (
                size == NATIVE and self.info.inference_size is None):
            raise UserError(f"{self.path.name} runs frames at the size it was built for (its "
                            "trained scale), not at another run size",
                            "drop the size option, or use the .onnx model for other run sizes")
        if self.info.input_kind != "frame":
            warnings.warn(f"{self.path.name} holds the network alone: frames are resized and "
                          "labels made on the host, slower at camera resolution than the frame "
                          "graph, which does both in the model; 'diga export RUN' writes it",
                          HostPathWarning, stacklevel=2)
        if size == TRAINED and not self.info.scale_recorded and self.info.dynamic:
            warnings.warn(f"{self.path.name} records no inference size (exported by diga 0.1): "
                          "each image runs at its own size, which is the trained scale only if "
                          "the model was trained on images of that size; export it again with "
                          "'diga export RUN' to run at the trained scale", ScaleWarning,
                          stacklevel=2)

    def _read_sidecar(self) -> tuple[ModelInfo, dict[str, Any]]:
        sidecar = engine_sidecar(self.path)
        if not sidecar.is_file():
            raise UserError(f"engine {self.path} has no metadata side-car {sidecar.name}",
                            "keep the .json that 'diga export --trt' writes next to the engine")
        try:
            data = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"engine metadata {sidecar} is not valid JSON",
                            "rebuild the engine with 'diga export --trt'") from None
        return ModelInfo.from_props(data.get("metadata", {}), str(sidecar)), data

    def run_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (H, W) an image of ``image_size`` runs at (``model_input_size``)."""
        return model_input_size(self.info, image_size, self.size)

    def describe(self) -> str:
        """One line: file, backend / provider, precision, input and output kinds, run size."""
        shape = "dynamic" if self.info.dynamic else "x".join(map(str, self.info.input_size or ()))
        if not self.info.dynamic:
            runs = "static size"
        elif self.size == TRAINED:
            trained = self.info.inference_size
            runs = (f"runs at the trained {trained[0]}x{trained[1]}" if trained else
                    "runs at each image's own size (trained so)" if self.info.scale_recorded else
                    "runs at each image's own size (no inference size recorded)")
        elif isinstance(self.size, tuple):
            runs = f"runs at {self.size[0]}x{self.size[1]}"
        else:
            runs = "runs at each image's own size"
        if self.info.input_kind == "frame":
            where = ("resized with Pillow on the host" if self.info.frame == "openvino"
                     else "resized in the model")
            return (f"{self.path.name}: {self.provider} ({self.backend}), {self.info.precision}, "
                    f"frames of any size in ({runs}, {where}), labels at the frame's size out "
                    f"(in the model), {self.info.num_classes} classes")
        return (f"{self.path.name}: {self.provider} ({self.backend}), {self.info.precision}, "
                f"input {self.info.input_kind} {self.info.layout} {shape} ({runs}), "
                f"output {self.info.output_kind}, {self.info.num_classes} classes")

    def prepare(self, images: Sequence[Any]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Images that run at one size -> (input batch, original sizes), for a model that
        holds the network alone (a frame graph takes the frames: ``segment``)."""
        if self.info.input_kind == "frame":
            raise ValueError(f"{self.path.name} is a frame graph: give it the frames (segment)")
        rgbs = [to_rgb_uint8(img) for img in images]
        sizes = [img.shape[:2] for img in rgbs]
        run_sizes = {self.run_size(s) for s in sizes}
        if len(run_sizes) != 1:
            raise ValueError("prepare() needs images of one size; predict_batch groups them")
        run_size = run_sizes.pop()
        return prepare_batch([resize_rgb(img, run_size) for img in rgbs], self.info), sizes

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw model output for a prepared batch: (B, C, H, W) logits or (B, H, W) labels."""
        return self._model.run(batch)

    def __call__(self, image: Any, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Label map uint8 (H, W) of train ids, at the image's size (or ``out_size``)."""
        return self.predict_batch([image], out_size)[0]

    def predict_batch(self, images: Sequence[Any], out_size: tuple[int, int] | None = None,
                      max_batch: int = 8) -> list[np.ndarray]:
        """Label maps for many images; images that run at the same size share a batch."""
        return [p.labels for p in self.segment(images, out_size, max_batch)]

    def segment(self, images: Sequence[Any], out_size: tuple[int, int] | None = None,
                max_batch: int = 8, uncertainty: bool = False) -> list[Prediction]:
        """A ``Prediction`` per image: its labels and, with ``uncertainty`` (and a model that
        outputs logits), its confidence and uncertainty maps. Images that run at the same size
        share a batch of at most ``max_batch``."""
        if uncertainty and not self.info.has_confidence:
            raise UserError(f"{self.path.name} outputs labels alone, so it has no confidence to "
                            "map", "export the model again with 'diga export RUN'")
        rgbs = [to_rgb_uint8(img, name=f"image {i}" if len(images) > 1 else "image")
                for i, img in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(rgbs):
            groups.setdefault(self.run_size(img.shape[:2]), []).append(i)
        results: list[Prediction | None] = [None] * len(rgbs)
        step = min(max_batch, self._model.max_batch or max_batch)  # a static batch caps it
        if self.info.input_kind == "frame":  # one batch per frame size: the graph does the rest
            from diga.runtime.frames import segment_frames

            frames: dict[tuple[int, int], list[int]] = {}
            for i, img in enumerate(rgbs):
                frames.setdefault(img.shape[:2], []).append(i)
            for frame_size, members in frames.items():
                for start in range(0, len(members), step):
                    chunk = members[start:start + step]
                    predictions = segment_frames(self._model, self.info, [rgbs[i] for i in chunk],
                                                 self.run_size(frame_size), out_size,
                                                 uncertainty, self.path.name)
                    for i, prediction in zip(chunk, predictions, strict=True):
                        results[i] = prediction
            return results  # type: ignore[return-value]
        for run_size, members in groups.items():
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                batch = prepare_batch([resize_rgb(rgbs[i], run_size) for i in chunk], self.info)
                outputs = self.run(batch)
                for i, output in zip(chunk, outputs, strict=True):
                    size = tuple(out_size or rgbs[i].shape[:2])
                    results[i] = prediction_from_output(
                        output, self.info, None if size == run_size else size, uncertainty)
        return results  # type: ignore[return-value]

    def stream(self, source: Any, stride: int = 1, batch: int = 4,
               uncertainty: bool = False) -> Iterator[tuple[Frame, Prediction]]:
        """``(frame, prediction)`` for every ``stride``-th frame of a video file, a webcam
        index, a stream URL (PyAV), or any iterable of images (an app's own camera loop).

        Frames are batched ``batch`` at a time for the model, so a result comes out up to
        ``batch - 1`` frames after its frame went in; ``batch=1`` for the lowest delay.
        """
        if isinstance(source, (str, Path, int)):
            with open_video(source) as video:
                yield from self._stream_frames(video.frames(stride), batch, uncertainty)
        else:
            frames = (Frame(i, None, to_rgb_uint8(img))
                      for i, img in enumerate(source) if i % stride == 0)
            yield from self._stream_frames(frames, batch, uncertainty)

    def _stream_frames(self, frames: Iterable[Frame], batch: int,
                       uncertainty: bool) -> Iterator[tuple[Frame, Prediction]]:
        def run(chunk: list[Frame]) -> Iterator[tuple[Frame, Prediction]]:
            predictions = self.segment([f.image for f in chunk], None, batch, uncertainty)
            return zip(chunk, predictions, strict=True)

        pending: list[Frame] = []
        for frame in frames:
            pending.append(frame)
            if len(pending) == batch:
                yield from run(pending)
                pending = []
        if pending:
            yield from run(pending)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        return colorize(labels, self.info.palette)

    def close(self) -> None:
        """Release the session or the engine's device memory."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 (H, W) train ids -> RGB uint8 (H, W, 3); ignored / unknown ids are black."""
    lut = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:255]
    lut[: len(palette)] = palette
    return lut[np.asarray(labels, np.uint8)]


def overlay(image: Any, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colour mask blended over the RGB image: ``(1 - alpha) * image + alpha * colour``."""
    rgb = to_rgb_uint8(image)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colorize(labels, palette)
    return blended.round().astype(np.uint8)
