"""``diga export`` as one function: checkpoint -> frame graphs (ONNX fp32 / fp16 / int8,
OpenVINO IRs, TensorRT engines), each checked.

The network is exported once as the core (``onnx_export``: normalised NCHW float in, logits at
feature resolution out); fp16 and int8 (``quantize``: calibrated on target train images) are
made of the core; every shipped file is a core wrapped into the frame graph of its backend
(``frame``: frames of any size in, labels at their size out). Cores live in a temporary folder
only. Each file is compared with PyTorch (``parity``) and, with --int8 / --fp16, scored on
target val; ``export.json`` lists everything written, ``parity.json`` the parity numbers.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diga.checkpoint import default_export_dir as default_out_dir
from diga.checkpoint import load_model
from diga.config import Config, saved_config_with
from diga.errors import UserError
from diga.export.formats import FORMATS, ExportFormat, formats_for_flags
from diga.export.onnx_export import export_onnx, model_info, write_frame_model
from diga.export.parity import check_frame_parity, evaluate_model_file, target_images
from diga.io import atomic_write_json, publish_folder
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
    # every file is written in out/.partial first and moved into out at the end (renames take
    # no space): a full disk or a failure half-way leaves the previous export as it was
    stage = out / ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    ex = cfg.export

    frames = "source train" if cfg.data.target.kind == "none" else "target val"
    say(f"reading {ex.parity_images} {frames} images for parity")
    parity_set = target_images(cfg, "val", ex.parity_images)
    input_size = tuple(cfg.inference_size or parity_set[0].image.shape[:2])
    trained = cfg.inference_size
    say(f"inference size {trained[0]}x{trained[1]}: the model resizes every frame to it"
        if trained else "inference size: each frame's own size (the target domain has no resize)")
    info = model_info(cfg, ckpt.meta, input_size, dynamic=ex.dynamic,  # type: ignore[arg-type]
                      classes=saved.num_classes, frame="onnxruntime")  # the model's own classes
    # the network alone (float NCHW at the run size in, feature-grid logits out): what is
    # quantised and converted, then wrapped into each file's frame graph
    core_info = info.replace(input_kind="float", output_kind="logits", layout="NCHW", frame=None)

    summary = ExportSummary(out_dir=out, info=info)
    with tempfile.TemporaryDirectory(prefix="diga-export-") as tmp, _staged(stage):
        cores: dict[str, Path] = {}  # precision -> core file
        say(f"exporting {cfg.model.name} to ONNX (opset {ex.opset}, "
            f"{'dynamic' if ex.dynamic else 'static'} shapes)")
        result = export_onnx(model, core_info, Path(tmp) / "core.onnx", opset=ex.opset,
                             exporter=ex.exporter, features=True)
        summary.exporter, summary.fallback_reason, summary.opset = (
            result.exporter, result.fallback_reason, result.opset)
        cores["fp32"] = result.path
        files: list[ExportedFile] = []
        paths: dict[str, Path] = {}

        def ship(fmt: ExportFormat, backend: str = "cpu") -> ExportedFile:
            """Wrap the core of the format's precision into its frame graph and check it."""
            flavour = {".xml": "openvino", ".engine": "tensorrt"}.get(fmt.suffix, "onnxruntime")
            file_info = info.replace(precision=fmt.precision, frame=flavour)
            path = stage / fmt.file
            if flavour == "onnxruntime":
                say(f"writing {fmt.file}")
                write_frame_model(cores[fmt.precision], path, file_info)
            elif flavour == "openvino":
                from diga.export.openvino_export import export_openvino

                frame_onnx = write_frame_model(cores[fmt.precision], Path(tmp) / f"{fmt.name}.onnx",
                                               file_info)
                say(f"converting to the OpenVINO IR {fmt.file}")
                export_openvino(frame_onnx, path, file_info)
            else:
                from diga.export.tensorrt_build import build_engine

                frame_onnx = write_frame_model(cores[fmt.precision], Path(tmp) / f"{fmt.name}.onnx",
                                               file_info, run_size=trained)
                say(f"building strongly typed TensorRT {fmt.precision} engine {fmt.file}")
                build_engine(frame_onnx, path, file_info, ex,
                             ex.trt_timing_cache or out / "trt_timing.cache",
                             FORMATS[fmt.source].file)
            paths[fmt.name] = path
            say(f"parity of {fmt.file} vs PyTorch on {len(parity_set)} target frames")
            size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size
                                          if fmt.suffix == ".xml" else 0)
            exported = ExportedFile(fmt.name, path, fmt.precision, size,
                                    check_frame_parity(model, path, parity_set, backend).as_dict())
            files.append(exported)
            return exported

        agreement = ship(FORMATS["onnx"]).parity["pixel_agreement"]  # type: ignore[index]
        if agreement < ex.min_agreement:  # a wrong graph: stop before building on it
            summary.files = files
            _write_reports(summary, stage, model_path, ckpt.folder, ckpt.meta, cfg)
            _publish(summary, stage)
            raise UserError(f"{FORMATS['onnx'].file} agrees with PyTorch on only {agreement:.3f}% "
                            f"of pixels (export.min_agreement={ex.min_agreement}); see "
                            f"{out / 'parity.json'}",
                            "try export.exporter=torchscript or another export.opset")

        calibration_images: list = []

        def calibration() -> list:
            """The INT8 calibration images (target train), read once for every INT8 format."""
            if not calibration_images:
                calibration_images.extend(item.image for item in
                                          target_images(cfg, "train", ex.calib_images))
            return calibration_images

        if "onnx-fp16" in names:  # --fp16, or the source of the strongly typed fp16 engine
            from diga.export.quantize import convert_fp16

            say("converting the network to fp16")
            cores["fp16"] = convert_fp16(cores["fp32"], Path(tmp) / "core.fp16.onnx",
                                         core_info.replace(precision="fp16"))
            ship(FORMATS["onnx-fp16"])
        if "onnx-int8" in names or "openvino-int8" in names:
            from diga.export.quantize import quantize_int8

            on = "source" if cfg.data.target.kind == "none" else "target"
            say(f"calibrating int8 ({ex.calib_method}) on {ex.calib_images} {on} train images")
            cores["int8"] = quantize_int8(cores["fp32"], Path(tmp) / "core.int8.onnx",
                                          calibration(), core_info, ex.calib_method,
                                          ex.int8_float)
            if "onnx-int8" in names:
                ship(FORMATS["onnx-int8"])

        for fmt in (f for f in formats if f.suffix == ".xml"):
            if fmt.precision == "int8" and ex.openvino_int8 == "nncf":
                from diga.export.openvino_export import quantize_openvino_nncf

                say(f"quantising {paths['openvino'].name} with NNCF on {ex.calib_images} target "
                    f"train images: {fmt.file}")
                ir_info = info.replace(precision="int8", frame="openvino")
                path = quantize_openvino_nncf(paths["openvino"], stage / fmt.file, calibration(),
                                              ir_info)
                paths[fmt.name] = path
                files.append(ExportedFile(
                    fmt.name, path, "int8", path.stat().st_size + path.with_suffix(".bin").stat().st_size,
                    check_frame_parity(model, path, parity_set, "openvino").as_dict()))
            else:
                ship(fmt, "openvino")

        if names & {"onnx-fp16", "onnx-int8", "openvino-int8"}:
            _evaluate(files, cfg, summary, say)

        parity = {f.format: (f.parity or {}).get("pixel_agreement") for f in files}
        for fmt in formats:
            if not fmt.needs_gpu:
                continue
            agreement = parity.get(fmt.source)
            if fmt.precision == "fp16" and agreement is not None and agreement < ex.min_agreement_fp16:
                # a strongly typed engine computes what its ONNX computes: check that first
                summary.notes.append(f"{fmt.file} not built: {paths[fmt.source].name} agrees with "
                                     f"fp32 PyTorch on {agreement:.2f}% of pixels "
                                     f"(export.min_agreement_fp16={ex.min_agreement_fp16})")
                continue
            ship(fmt, "tensorrt")

        summary.files = files
        _write_reports(summary, stage, model_path, ckpt.folder, ckpt.meta, cfg)
        _publish(summary, stage)
    return summary


@contextlib.contextmanager
def _staged(stage: Path) -> Iterator[None]:
    """Remove the staging folder of a failed export (a published one is gone already)."""
    try:
        yield
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(summary: ExportSummary, stage: Path) -> None:
    """Move the staged files into the export folder, export.json last; the summary's paths
    follow them."""
    publish_folder(stage, summary.out_dir, last="export.json")
    for exported in summary.files:
        exported.path = summary.out_dir / exported.path.name


def _evaluate(files: list[ExportedFile], cfg: Config, summary: ExportSummary, say: Report) -> None:
    """Target-val mIoU of the float ONNX and its variants on the CPU (onnxruntime; OpenVINO for
    the IRs)."""
    ex = cfg.export
    if cfg.data.target.kind == "none":
        summary.notes.append("no target domain (domain generalisation): no mIoU measured; score "
                             "the files with diga eval FILE --target KIND:ROOT")
        return
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


def _write_reports(summary: ExportSummary, out: Path, model_path: Path, ckpt_folder: Path,
                   meta: dict[str, Any], cfg: Config) -> None:
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
