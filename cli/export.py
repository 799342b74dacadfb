"""``diga export``: a trained model to ONNX (float, fp16, int8) and TensorRT, each checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from diga.cli.common import Overrides, console, err_console
from diga.io import human_bytes


def export_command(
    model: Annotated[Path, typer.Argument(help="A run directory or checkpoint folder.",
                                          show_default=False)],
    overrides: Overrides = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Write the float32 ONNX model (always "
                                       "written: every other format starts from it).")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="Also an INT8 QDQ ONNX calibrated on "
                                       "target train images, with its mIoU vs fp32.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also an fp16 ONNX (for GPUs).")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also strongly typed TensorRT engines, "
                                      "each from the ONNX of its precision (fp16; int8 with "
                                      "--int8). Needs TensorRT 10.12+ or 11.x and an NVIDIA "
                                      "GPU.")] = False,
    trt_fp32: Annotated[bool, typer.Option("--trt-fp32", help="Also the float32 TensorRT "
                                           "engine (the reference for the others).")] = False,
    openvino: Annotated[bool, typer.Option("--openvino", help="Also OpenVINO IRs for CPUs "
                                           "(model.xml; model.int8.xml with --int8), with the "
                                           "metadata inside. Needs pip install "
                                           "'diga[openvino]'.")] = False,
    static: Annotated[bool, typer.Option("--static", help="Fixed input shape (batch 1 at "
                                         "export.input_size) instead of dynamic.")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (>= 17; default "
                                              "export.opset).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: "
                                             "<run>/export).", show_default=False)] = None,
) -> None:
    """Export a trained model: ONNX with metadata, INT8 / FP16, OpenVINO, TensorRT.

    Every file takes camera frames of any size (uint8 RGB) and returns labels
    at the frame's size: the resize to the trained scale, the normalisation,
    the upsampling of the logits and the argmax run inside the model (a
    second output holds the logits, for confidence maps). Each file is
    compared with PyTorch on target val frames (pixel agreement, max |logit
    difference|), saved as parity.json. With --int8 / --fp16 the target-val
    mIoU and CPU time per image of each file are measured. export.json lists
    every file.

    Overrides set the data (data.target.root=...) and the export knobs
    (export.calib_images, export.calib_method, export.parity_images,
    export.input_size, export.trt_min_size, export.exporter, ...).

    Examples:
      diga export runs/selftrain --int8 --openvino
      diga export runs/selftrain --trt --fp16 export.calib_method=entropy
    """
    from diga.errors import UserError

    del onnx  # the float ONNX is always written; the flag exists for explicit scripts
    from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

    if model.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise UserError(f"{model.name} is already an exported model",
                        "give the run directory or checkpoint folder it came from")
    extra = list(overrides or [])
    stray = [a for a in extra if "=" not in a]
    if stray:
        raise UserError(f"unexpected argument '{stray[0]}'", "give MODEL first, then key.sub=value "
                        "overrides (diga export runs/x export.calib_images=64)")
    if static:
        extra.append("export.dynamic=false")
    if opset is not None:
        extra.append(f"export.opset={opset}")

    from diga.export.pipeline import ExportOptions, export_checkpoint

    handler = _WarningLines()
    logging.getLogger("diga.export").addHandler(handler)
    try:
        with console.status("exporting") as status:
            summary = export_checkpoint(
                model, extra, ExportOptions(fp16=fp16, int8=int8, trt=trt, trt_fp32=trt_fp32,
                                            openvino=openvino),
                out_dir=out, report=lambda msg: status.update(msg))
    finally:
        logging.getLogger("diga.export").removeHandler(handler)

    info = summary.info
    shape = "dynamic" if info.dynamic else f"static {info.input_size[0]}x{info.input_size[1]}"
    runs = (f"runs frames at {info.inference_size[0]}x{info.inference_size[1]}"
            if info.inference_size else "runs frames at their own size")
    title = (f"{summary.out_dir}  ({summary.exporter} exporter, opset {summary.opset}, {shape}, "
             f"{runs}; frames in, labels at their size out)")
    table = Table(title=escape(title))
    table.add_column("file", no_wrap=True)
    for col in ("precision", "size", "agree %", "max |Δ|", "mIoU", "ms/img"):
        table.add_column(col, justify="left" if col == "precision" else "right")
    for f in summary.files:
        p, e = f.parity or {}, f.evaluation or {}
        diff = p.get("max_abs_logit_diff")
        table.add_row(f.path.name, f.precision, human_bytes(f.size_bytes),
                      f"{p['pixel_agreement']:.3f}" if p else "-",
                      f"{diff:.2e}" if diff is not None else "-",
                      f"{e['miou']:.2f}" if e else "-",
                      f"{e['ms_per_image']:.1f}" if e else "-")
    console.print(table)
    for note in summary.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(f"wrote {summary.out_dir / 'export.json'} and {summary.out_dir / 'parity.json'}",
                  highlight=False)
    best = next((f.path for f in summary.files if f.precision == "int8"), summary.files[0].path)
    console.print(f"next: diga bench {summary.out_dir.parent}  (latency and mIoU of every file); "
                  f"diga predict {summary.out_dir / best.name} photos/ --out predictions",
                  highlight=False, markup=False, soft_wrap=True)


class _WarningLines(logging.Handler):
    """Exporter warnings (e.g. the dynamo -> TorchScript fallback) as one yellow line each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
