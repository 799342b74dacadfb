"""``diga export`` as one function: checkpoint -> ONNX -> fp16 / int8 / TensorRT, each checked.

Stages in order, each its own module: ``onnx_export`` (graph, metadata, checker), ``parity``
(PyTorch vs onnxruntime on target images), ``quantize`` (INT8 calibrated on target train
images, fp16), ``tensorrt_build`` (engines). Everything written is summarised in
``export.json``; parity numbers go to ``parity.json`` next to the models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diga.checkpoint import load_model, resolve_checkpoint
from diga.config import Config, saved_config_with
from diga.errors import UserError
from diga.export.formats import FORMATS, ExportFormat, formats_for_flags
from diga.export.onnx_export import ExportWrapper, export_onnx, model_info
from diga.export.parity import check_parity, evaluate_model_file, target_images
from diga.io import atomic_write_json
from diga.runtime.metadata import ModelInfo

log = logging.getLogger("diga.export")

Report = Callable[[str], None]


@dataclass
class ExportOptions:
    """What to write; ``static``, ``opset`` and the rest of the knobs live in ``cfg.export``."""

    fp16: bool = False
    int8: bool = False
    trt: bool = False
    trt_fp32: bool = False  # also the float32 engine (the reference for the others)
    openvino: bool = False  # OpenVINO IRs of the float (and with int8, the QDQ) ONNX
    bake_preprocess: bool = False
    argmax: bool = False


@dataclass
class ExportedFile:
    format: str
    path: Path
    precision: str
    size_bytes: int
    parity: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # target-val mIoU through the runtime

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = self.path.name
        return out


@dataclass
class ExportSummary:
    out_dir: Path
    files: list[ExportedFile] = field(default_factory=list)
    exporter: str = ""
    fallback_reason: str | None = None
    opset: int = 0
    info: ModelInfo | None = None
    notes: list[str] = field(default_factory=list)


def default_out_dir(model_path: Path) -> Path:
    """``<run>/export`` for a run directory or one of its checkpoints, else ``<folder>/export``."""
    model_path = Path(model_path)
    ckpt = resolve_checkpoint(model_path).folder
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export"
    return model_path / "export"


def _fits(images: list, input_size: tuple[int, int]) -> bool:
    return all(item.image.shape[:2] == tuple(input_size) for item in images)


def export_checkpoint(model_path: Path, overrides: list[str] | None = None,
                      options: ExportOptions | None = None, out_dir: Path | None = None,
                      report: Report | None = None) -> ExportSummary:
    """Export a run directory or checkpoint folder; returns what was written and measured.

    Raises:
        UserError: bad inputs, no TensorRT / GPU for ``trt`` (checked before any work), or the
            float ONNX disagreeing with PyTorch below ``export.min_agreement`` (it stays on
            disk with parity.json, for inspection; nothing is built from it).
    """
    options = options or ExportOptions()
    say = report or (lambda msg: log.info(msg))
    formats = formats_for_flags(fp16=options.fp16, int8=options.int8, trt=options.trt,
                                trt_fp32=options.trt_fp32, openvino=options.openvino)
    names = {f.name for f in formats}
    if any(f.needs_gpu for f in formats):
        from diga.export.tensorrt_build import check_tensorrt_ready

        check_tensorrt_ready()  # fail in a second, not after minutes of export and calibration
    if any(f.suffix == ".xml" for f in formats):
        from diga.runtime.openvino_model import import_openvino

        import_openvino()  # the same: the missing extra in one line, before any work
    model, saved, ckpt = load_model(Path(model_path), "cpu")
    cfg = saved_config_with(ckpt.config, overrides, "checkpoint config")
    out = Path(out_dir) if out_dir is not None else default_out_dir(model_path)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file", "choose a folder with --out")
    out.mkdir(parents=True, exist_ok=True)
    ex = cfg.export

    say(f"reading {ex.parity_images} target val images for parity")
    parity_set = target_images(cfg, "val", ex.parity_images)
    input_size = tuple(cfg.inference_size or parity_set[0].image.shape[:2])
    trained = cfg.inference_size
    say(f"inference size {trained[0]}x{trained[1]}: the runtime resizes every image to it"
        if trained else "inference size: each image's own size (the target domain has no resize)")
    if not ex.dynamic and not _fits(parity_set, input_size):
        say(f"static model at {input_size[0]}x{input_size[1]}: images are resized to it")
    info = model_info(cfg, ckpt.meta, input_size, dynamic=ex.dynamic,  # type: ignore[arg-type]
                      bake_preprocess=options.bake_preprocess, argmax=options.argmax,
                      classes=saved.num_classes)  # the model's own, whatever data.classes says

    summary = ExportSummary(out_dir=out, info=info)
    paths: dict[str, Path] = {}
    onnx_fmt = FORMATS["onnx"]
    say(f"exporting {cfg.model.name} to ONNX (opset {ex.opset}, "
        f"{'dynamic' if ex.dynamic else 'static'} shapes)")
    result = export_onnx(model, info, out / onnx_fmt.file, opset=ex.opset, exporter=ex.exporter)
    summary.exporter, summary.fallback_reason, summary.opset = (
        result.exporter, result.fallback_reason, result.opset)
    paths["onnx"] = result.path
    reference = ExportWrapper(model, info).eval()

    calibration_images: list = []

    def calibration() -> list:
        """The INT8 calibration images (target train), read once for every INT8 format."""
        if not calibration_images:
            calibration_images.extend(item.image for item in
                                      target_images(cfg, "train", ex.calib_images))
        return calibration_images

    def parity_of(fmt: ExportFormat) -> dict[str, Any]:
        say(f"parity of {fmt.file} vs PyTorch on {len(parity_set)} target images")
        return check_parity(reference, paths[fmt.name], parity_set).as_dict()

    files = [ExportedFile("onnx", result.path, "fp32", result.path.stat().st_size, parity_of(onnx_fmt))]
    agreement = files[0].parity["pixel_agreement"]  # type: ignore[index]
    if agreement < ex.min_agreement:  # a wrong graph: stop before building on it
        summary.files = files
        _write_reports(summary, model_path, ckpt.folder, ckpt.meta, cfg)
        raise UserError(f"{result.path.name} agrees with PyTorch on only {agreement:.3f}% of "
                        f"pixels (export.min_agreement={ex.min_agreement}); see {out / 'parity.json'}",
                        "try export.exporter=torchscript or another export.opset")

    if "onnx-fp16" in names:  # --fp16, or the source of the strongly typed fp16 engine
        from diga.export.quantize import convert_fp16

        fmt = FORMATS["onnx-fp16"]
        say(f"converting to fp16: {fmt.file}")
        paths[fmt.name] = convert_fp16(paths["onnx"], out / fmt.file, info)
        files.append(ExportedFile(fmt.name, paths[fmt.name], "fp16",
                                  paths[fmt.name].stat().st_size, parity_of(fmt)))
    if "onnx-int8" in names:
        from diga.export.quantize import quantize_int8

        fmt = FORMATS["onnx-int8"]
        say(f"calibrating int8 ({ex.calib_method}) on {ex.calib_images} target train images")
        paths[fmt.name] = quantize_int8(paths["onnx"], out / fmt.file, calibration(), info,
                                        ex.calib_method)
        files.append(ExportedFile(fmt.name, paths[fmt.name], "int8",
                                  paths[fmt.name].stat().st_size, parity_of(fmt)))

    for fmt in (f for f in formats if f.suffix == ".xml"):
        from diga.export.openvino_export import export_openvino

        if fmt.precision == "int8" and ex.openvino_int8 == "nncf":
            from diga.export.openvino_export import quantize_openvino_nncf

            say(f"quantising {paths['openvino'].name} with NNCF on {ex.calib_images} target "
                f"train images: {fmt.file}")
            paths[fmt.name] = quantize_openvino_nncf(paths["openvino"], out / fmt.file,
                                                     calibration(), info.replace(precision="int8"))
        else:
            say(f"converting {paths[fmt.source].name} to the OpenVINO IR {fmt.file}")
            paths[fmt.name] = export_openvino(paths[fmt.source], out / fmt.file,
                                              info.replace(precision=fmt.precision))
        files.append(ExportedFile(fmt.name, paths[fmt.name], fmt.precision,
                                  paths[fmt.name].stat().st_size
                                  + paths[fmt.name].with_suffix(".bin").stat().st_size,
                                  check_parity(reference, paths[fmt.name], parity_set,
                                               backend="openvino").as_dict()))

    if names & {"onnx-fp16", "onnx-int8", "openvino-int8"}:
        _evaluate(files, cfg, summary, say)

    parity = {f.format: (f.parity or {}).get("pixel_agreement") for f in files}
    for fmt in formats:
        if not fmt.needs_gpu:
            continue
        from diga.export.tensorrt_build import build_engine

        agreement = parity.get(fmt.source)
        if fmt.precision == "fp16" and agreement is not None and agreement < ex.min_agreement_fp16:
            # a strongly typed engine computes what its ONNX computes: check that first
            summary.notes.append(f"{fmt.file} not built: {paths[fmt.source].name} agrees with fp32 "
                                 f"PyTorch on {agreement:.2f}% of pixels (export.min_agreement_fp16"
                                 f"={ex.min_agreement_fp16})")
            continue
        cache = ex.trt_timing_cache or out / "trt_timing.cache"
        say(f"building strongly typed TensorRT {fmt.precision} engine {fmt.file} from "
            f"{paths[fmt.source].name}")
        build_engine(paths[fmt.source], out / fmt.file, info.replace(precision=fmt.precision),
                     ex, cache)
        paths[fmt.name] = out / fmt.file
        files.append(ExportedFile(fmt.name, paths[fmt.name], fmt.precision,
                                  paths[fmt.name].stat().st_size,
                                  check_parity(reference, paths[fmt.name], parity_set,
                                               backend="tensorrt").as_dict()))

    summary.files = files
    _write_reports(summary, model_path, ckpt.folder, ckpt.meta, cfg)
    return summary


def _evaluate(files: list[ExportedFile], cfg: Config, summary: ExportSummary, say: Report) -> None:
    """Target-val mIoU of the float ONNX and its variants on the CPU (onnxruntime; OpenVINO for
    the IRs)."""
    ex = cfg.export
    say("reading target val images for the mIoU comparison")
    val = target_images(cfg, "val", ex.eval_images, finest=True)
    if not val.has_labels:
        summary.notes.append("target val has no labels: no mIoU measured")
        return
    for exported in files:
        runtime = "OpenVINO" if exported.path.suffix == ".xml" else "onnxruntime"
        say(f"target-val mIoU of {exported.path.name} on {len(val)} images ({runtime} CPU)")
        try:
            exported.evaluation = evaluate_model_file(exported.path, val, backend="cpu")
        except UserError as exc:  # e.g. an fp16 op this onnxruntime has no CPU kernel for
            summary.notes.append(f"{exported.path.name} not evaluated on CPU: {exc}")
            continue
        for note in exported.evaluation.pop("notes"):  # data.classes is not the model's
            if note not in summary.notes:
                summary.notes.append(note)
                say(note)


def _write_reports(summary: ExportSummary, model_path: Path, ckpt_folder: Path,
                   meta: dict[str, Any], cfg: Config) -> None:
    out = summary.out_dir
    first = summary.files[0].parity if summary.files else None
    parity = {"split": "target val", "images": first["images"] if first else 0,
              "models": {f.path.name: f.parity for f in summary.files if f.parity}}
    atomic_write_json(out / "parity.json", parity)
    info = summary.info
    atomic_write_json(out / "export.json", {
        "model": str(model_path),
        "checkpoint": str(ckpt_folder),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "config_hash": cfg.hash(),
        "exporter": summary.exporter,
        "fallback_reason": summary.fallback_reason,
        "opset": summary.opset,
        "dynamic": info.dynamic if info else None,
        "input_size": list(info.input_size) if info and info.input_size else None,
        "inference_size": list(info.inference_size) if info and info.inference_size else None,
        "output_resize": info.output_resize if info else None,
        "input_kind": info.input_kind if info else None,
        "output_kind": info.output_kind if info else None,
        "layout": info.layout if info else None,
        "files": [f.as_dict() for f in summary.files],
        "notes": summary.notes,
    })
