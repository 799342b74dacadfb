"""The one table of model formats and the backends that run them.

``diga export`` checks its flags against it and names its files from it; ``diga bench`` makes
its rows from it (one per model file and backend that can run it), so the two never disagree.
Importing it loads neither torch nor onnxruntime (the runtime's backend names: numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diga.errors import UserError
from diga.runtime.segmenter import BACKENDS as RUNTIME_BACKENDS  # what Segmenter(backend=) takes


@dataclass(frozen=True)
class Backend:
    """A way ``diga bench`` runs a model: PyTorch, or one of the runtime's backends
    (``diga.runtime.BACKENDS``, what ``Segmenter(backend=...)`` takes) with its settings."""

    name: str  # as ``diga bench --backend`` spells it
    runtime: str  # ``Segmenter(backend=...)`` for ONNX / IR / engines, "torch" for checkpoints
    needs_gpu: bool
    description: str
    hint: str = "latency"  # ``Segmenter(hint=...)``: OpenVINO's performance hint

    def __post_init__(self) -> None:
        if self.runtime != "torch" and self.runtime not in RUNTIME_BACKENDS:
            raise ValueError(f"bench backend {self.name!r} runs on {self.runtime!r}, which is not "
                             f"a runtime backend ({', '.join(RUNTIME_BACKENDS)})")


BENCH_BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "torch", False, "PyTorch (the reference)"),
    Backend("ort-cpu", "cpu", False, "onnxruntime, CPUExecutionProvider"),
    Backend("ort-cuda", "cuda", True, "onnxruntime, CUDAExecutionProvider"),
    Backend("ort-trt", "tensorrt", True, "onnxruntime, TensorrtExecutionProvider"),
    Backend("trt", "tensorrt", True, "TensorRT engine"),
    Backend("openvino", "openvino", False, "OpenVINO, CPU plugin, latency hint"),
    Backend("openvino-tput", "openvino", False, "OpenVINO, CPU plugin, throughput hint",
            hint="throughput"),
)}


@dataclass(frozen=True)
class ExportFormat:
    """One kind of model file.

    ``source`` is the format it is made from; ``needs_gpu`` is true where making it does
    (TensorRT builds for the GPU it runs on).
    """

    name: str
    file: str  # the file name diga export writes ("" for a checkpoint folder)
    suffix: str
    precision: str  # fp32 | fp16 | int8
    backends: tuple[str, ...]  # keys of BENCH_BACKENDS that can run it
    needs_gpu: bool
    source: str | None
    description: str


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("torch", "", "", "fp32", ("torch",), False, None,
                 "PyTorch checkpoint (safetensors)"),
    ExportFormat("onnx", "model.onnx", ".onnx", "fp32", ("ort-cpu", "ort-cuda", "ort-trt"), False,
                 None, "ONNX, float32"),
    ExportFormat("onnx-fp16", "model.fp16.onnx", ".onnx", "fp16", ("ort-cpu", "ort-cuda", "ort-trt"),
                 False, "onnx", "ONNX, float16 weights and activations, float32 I/O (for GPUs)"),
    ExportFormat("onnx-int8", "model.int8.onnx", ".onnx", "int8", ("ort-cpu", "ort-cuda", "ort-trt"),
                 False, "onnx", "ONNX with QDQ int8, calibrated on target-domain images"),
    ExportFormat("openvino", "model.xml", ".xml", "fp32", ("openvino", "openvino-tput"), False, "onnx",
                 "OpenVINO IR (+ .bin), float32, converted from the ONNX"),
    ExportFormat("openvino-int8", "model.int8.xml", ".xml", "int8", ("openvino", "openvino-tput"), False,
                 "onnx-int8", "OpenVINO IR from the QDQ int8 ONNX (its calibration)"),
    # TensorRT engines are strongly typed (TensorRT 11; 10.12+ with the STRONGLY_TYPED flag):
    # each takes its precision from the ONNX it is built from, with no precision builder flag
    ExportFormat("trt-fp32", "model.fp32.engine", ".engine", "fp32", ("trt",), True, "onnx",
                 "TensorRT engine, strongly typed from the float32 ONNX"),
    ExportFormat("trt-fp16", "model.fp16.engine", ".engine", "fp16", ("trt",), True, "onnx-fp16",
                 "TensorRT engine, strongly typed from the fp16 ONNX (float32 I/O)"),
    ExportFormat("trt-int8", "model.int8.engine", ".engine", "int8", ("trt",), True, "onnx-int8",
                 "TensorRT engine, strongly typed from the symmetric QDQ int8 ONNX"),
)}


def formats_for_flags(onnx: bool = False, fp16: bool = False, int8: bool = False,
                      trt: bool = False, trt_fp32: bool = False,
                      openvino: bool = False) -> list[ExportFormat]:
    """The formats ``diga export`` writes for its flags, each after the one it is made from.

    The float ONNX is always written (everything else starts from it). ``--trt`` builds an
    engine per requested precision (``--fp16``, ``--int8``; fp16 when it names none), each
    from the ONNX of its precision, which is then written too; ``--trt-fp32`` adds the float32
    engine. ``--openvino`` converts the float ONNX to an OpenVINO IR, and with ``--int8`` the
    QDQ ONNX too.
    """
    irs = (["openvino", "openvino-int8"] if int8 else ["openvino"]) if openvino else []
    engines = []
    if trt or trt_fp32:
        engines = [name for name, wanted in (("trt-fp32", trt_fp32),
                                             ("trt-fp16", trt and (fp16 or not int8)),
                                             ("trt-int8", trt and int8)) if wanted]
    sources = {FORMATS[name].source for name in engines}
    names = ["onnx"] + [n for n, wanted in (("onnx-fp16", fp16 or "onnx-fp16" in sources),
                                           ("onnx-int8", int8 or "onnx-int8" in sources)) if wanted]
    return [FORMATS[n] for n in names + irs + engines]


def format_of_file(path: Path) -> ExportFormat:
    """The format of a model path: a checkpoint / run folder, or a file named as export names it.

    An ``.onnx`` / ``.engine`` with another name is taken at the precision its name says
    (``*.int8.*``, ``*.fp16.*``), else float32 ONNX / fp16 engine.
    """
    path = Path(path)
    if path.is_dir():
        return FORMATS["torch"]
    suffix = path.suffix.lower()
    precision = next((p for p in ("int8", "fp16") if f".{p}." in path.name.lower()), "fp32")
    if suffix == ".onnx":
        return FORMATS["onnx" if precision == "fp32" else f"onnx-{precision}"]
    if suffix == ".xml":
        return FORMATS["openvino-int8" if precision == "int8" else "openvino"]
    if suffix in (".engine", ".plan", ".trt"):
        engine = next((p for p in ("int8", "fp32") if f".{p}." in path.name.lower()), "fp16")
        return FORMATS[f"trt-{engine}"]
    raise UserError(f"cannot tell the model format of {path.name}",
                    "give a run directory, a checkpoint folder, an .onnx, an .xml or an .engine")


def backends_for(path: Path) -> list[Backend]:
    """The backends that can run a model path (the bench rows for it)."""
    return [BENCH_BACKENDS[name] for name in format_of_file(path).backends]
