"""``diga predict``: labels, colour masks, overlays and class reports for images and videos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape

from diga.cli.common import console, err_console, runtime_warnings
from diga.cli.predict_io import (
    IMAGE_SUFFIXES,
    Look,
    Timer,
    VideoOutputs,
    check_image,
    collect_inputs,
    read_rgb,
    write_image_outputs,
)
from diga.errors import UserError
from diga.runtime.preprocess import RunSize
from diga.runtime.video import VIDEO_SUFFIXES, is_stream, open_video, require_av


class TorchPredictor:
    """A run directory or checkpoint through PyTorch (``TorchSegmenter``), for ``--backend``."""

    def __init__(self, path: Path, backend: str, size: RunSize) -> None:
        import torch

        from diga.train.evaluate import TorchSegmenter

        if backend in ("tensorrt", "openvino"):
            files = ".onnx and .engine" if backend == "tensorrt" else ".xml"
            flag = "--trt" if backend == "tensorrt" else "--openvino"
            raise UserError(f"backend '{backend}' runs {files} files, not checkpoints",
                            f"export first (diga export RUN {flag}), or use --backend auto|cpu|cuda")
        if backend == "cuda" and not torch.cuda.is_available():
            raise UserError("backend 'cuda' needs a CUDA GPU, and PyTorch sees none here",
                            "use --backend cpu (or auto)")
        device = torch.device("cuda" if backend != "cpu" and torch.cuda.is_available() else "cpu")
        self.segmenter = TorchSegmenter(path, device, size)
        cfg, ckpt = self.segmenter.cfg, self.segmenter.checkpoint
        trained = cfg.inference_size
        runs = ("each image's own size" if size == "native" or not trained else
                f"{trained[0]}x{trained[1]}" if size == "trained" else f"{size[0]}x{size[1]}")
        self.label = (f"{ckpt.folder} ({cfg.model.name}, {ckpt.meta.get('stage')} step "
                      f"{ckpt.step}): PyTorch on {device}, runs at {runs}")

    def segment(self, images: list[np.ndarray], out_size: tuple[int, int] | None = None,
                max_batch: int = 8, uncertainty: bool = False) -> list[Any]:
        return self.segmenter.segment(images, out_size, max_batch, uncertainty)

    def close(self) -> None:
        self.segmenter.close()


def _load_predictor(model: Path, backend: str, size: RunSize) -> tuple[Any, Any, str]:
    """(callable image -> labels, its ``ModelInfo``, one line saying what runs where)."""
    from diga.runtime import Segmenter
    from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

    if model.suffix.lower() in MODEL_FILE_SUFFIXES:
        seg = Segmenter(model, backend, size)
        return seg, seg.info, seg.describe()
    torch_seg = TorchPredictor(model, backend, size)
    return torch_seg, torch_seg.segmenter.info, torch_seg.label


def output_classes(names: tuple[str, ...], palette: np.ndarray, classes: list[str] | None,
                   where: str) -> tuple[np.ndarray | None, tuple[str, ...], np.ndarray, str]:
    """The labels ``predict --classes`` writes: (model id -> written id map, or None for the
    model's own ids; their names; their palette; one line saying which ids the PNGs hold)."""
    from diga.data.classes import IGNORE_INDEX, class_protocol
    from diga.protocols import parse_protocols, plan_scoring

    requested = parse_protocols(classes)
    if len(requested) > 1:
        raise UserError("predict writes the labels of one protocol: --classes takes one of "
                        "19, 16, 13", f"e.g. --classes {requested[0]}")
    own = f"labels: the model's own {len(names)}-class train ids"
    if not requested:
        return None, names, palette, own
    scoring = plan_scoring(names, class_protocol(requested[0]), requested, requested[0], where)
    protocol = scoring.protocols[0]
    if protocol.names == names:  # its own protocol, or one with classes it does not predict
        return None, names, palette, own + ("" if protocol.num_classes == requested[0] else
                                     f" (it has no {requested[0]}-class protocol's full set)")
    outside = scoring.pred_lut == protocol.num_classes  # a class of no id in the protocol
    lut = np.where(outside, IGNORE_INDEX, scoring.pred_lut).astype(np.uint8)
    others = [c for c in names if c not in protocol.names]
    return lut, protocol.names, protocol.palette, (f"labels: {protocol.num_classes}-class train ids, mapped by "
                                   f"class name from the model's {len(names)} ({', '.join(others)}"
                                   f" -> {IGNORE_INDEX})")


def predict_command(
    model: Annotated[Path, typer.Argument(help="A run directory, checkpoint folder, .onnx, .xml "
                                          "or .engine.", show_default=False)],
    inputs: Annotated[list[str], typer.Argument(
        help="Images, videos, folders of them, glob patterns ('frames/*.png'), a webcam index "
        "(0) or a stream URL (rtsp://, http://).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the outputs.", show_default=False)],
    backend: Annotated[str, typer.Option("--backend", help="auto, cpu, cuda, tensorrt or openvino.")] = "auto",
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0,
                                         help="Opacity of the colour mask in overlays.")] = 0.5,
    native_size: Annotated[bool, typer.Option(
        "--native-size", help="Run each image at its own size instead of the size the model "
        "was trained and evaluated at (the default, recorded in the model).")] = False,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Write the labels of the 16- or 13-class protocol (train ids, 255 "
        "for the model's other classes) instead of the model's own.", show_default=False)] = None,
    uncertainty: Annotated[bool, typer.Option(
        "--uncertainty", help="Also write the per-pixel uncertainty (softmax entropy / log C, "
        "in [0, 1]): <stem>_uncertainty.png (0-255), a heat map with its colour bar beside the "
        "overlay; for videos <stem>_uncertainty.mp4.")] = False,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Videos: predict every N-th "
                                        "frame; the outputs run at the rate / N.")] = 1,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images or frames per model "
                                       "call.")] = 4,
    save_frames: Annotated[bool, typer.Option(
        "--save-frames", help="Videos: also write each frame's label PNG "
        "(<stem>_frames/<index>_label.png).")] = False,
    legend: Annotated[bool, typer.Option("--legend/--no-legend", help="Draw the class legend "
                                         "(classes over 1% of the image) on overlays.")] = True,
) -> None:
    """Segment images and videos: labels, colour masks, overlays and class reports.

    For an image: <stem>_label.png (train ids), <stem>_color.png, <stem>_overlay.png (with a
    class legend) and <stem>.json (each class's share of the image and mean confidence), at
    the image's own size; the model runs at the size it was trained at. For a video, a webcam
    or a stream: <stem>_overlay.mp4 (the same size, the source's frame rate divided by
    --stride) and <stem>.jsonl, a line per frame. Folders are searched recursively and their
    structure is kept under --out. Videos need PyAV (pip install 'diga[video]'). An .onnx,
    .xml or .engine runs through the torch-free runtime, a run directory or checkpoint through
    PyTorch. Ctrl-C stops a stream and keeps what was written.

    Examples:
      diga predict runs/x/export/model.onnx street.jpg frames/ --out preds
      diga predict model.onnx drive.mp4 'clips/*.mkv' --stride 2 --out v
      diga predict model.onnx rtsp://camera.local/live --out cam
    """
    from diga.runtime import check_backend

    check_backend(backend)
    found = collect_inputs(inputs)
    for note in found.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if not found.images and not found.videos:
        raise UserError("nothing to predict", f"give images ({', '.join(IMAGE_SUFFIXES)}), "
                        f"videos ({', '.join(VIDEO_SUFFIXES)}) or folders holding them")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file", "choose a folder with --out")
    if found.videos:
        require_av()  # before the model loads: one line saying how to install PyAV
        for source, _ in found.videos:  # a damaged file fails here, before any output
            if not is_stream(source):
                open_video(source).close()
    for path, _ in found.images:
        check_image(path)
    with runtime_warnings():  # e.g. a GPU fallback, or a file without an inference size
        predictor, info, label = _load_predictor(model, backend,
                                                 "native" if native_size else "trained")
    try:
        if uncertainty and not info.has_confidence:
            raise UserError(f"{model.name} outputs labels alone, so it has no confidence to map",
                            "export the model again with 'diga export RUN', or drop "
                            "--uncertainty")
        lut, names, palette, written = output_classes(info.class_names, info.palette, classes,
                                                      model.name)
        look = Look(lut, names, palette, alpha, legend, uncertainty)
        console.print(f"model: {label}", highlight=False)
        console.print(written, highlight=False)
        # the confidence the reports give: a frame graph's costs a host upsampling of its
        # logits, made only when asked (--uncertainty); a logits model's comes with its labels
        maps = uncertainty or (info.output_kind == "logits" and info.input_kind != "frame")
        if found.images:
            _predict_images(predictor, found.images, out, look, batch, maps, str(model))
        for source, stem in found.videos:
            _predict_video(predictor, source, out / stem, look, batch, stride, maps, save_frames)
    except KeyboardInterrupt:
        err_console.print("stopped (Ctrl-C); the outputs written so far are complete")
        raise typer.Exit(130) from None
    finally:
        predictor.close()


def _progress(what: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn(f"[bold]{escape(what)}[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                    transient=True)


def _predict_images(predictor: Any, images: list[tuple[Path, Path]], out: Path, look: Look,
                    batch: int, maps: bool, model: str) -> None:
    timer, files = Timer(), 0
    with _progress("images") as bar:
        task = bar.add_task("images", total=len(images), rate="")
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            with timer("decode"):
                rgbs = [read_rgb(path) for path, _ in chunk]
            with timer("model"):
                predictions = predictor.segment(rgbs, None, batch, maps)
            with timer("outputs"):
                for (_, stem), rgb, prediction in zip(chunk, rgbs, predictions, strict=True):
                    files += write_image_outputs(out / stem, rgb, prediction, look, model)
            bar.update(task, advance=len(chunk), rate=_rate(timer, start + len(chunk), "img"))
    console.print(f"wrote {files} files for {len(images)} image{'s' if len(images) != 1 else ''}"
                  f" to {out}; {timer.line(len(images), 'images')}", highlight=False)


def _predict_video(predictor: Any, source: str, base: Path, look: Look, batch: int, stride: int,
                   maps: bool, save_frames: bool) -> Timer:
    """One video's outputs; the time spent decoding, in the model and writing outputs."""
    from fractions import Fraction

    timer = Timer()
    with open_video(source) as video:
        fps = (video.fps or Fraction(25)) / stride  # an unknown rate (some streams): 25
        outputs = VideoOutputs(base, fps, video.size, look, save_frames)
        total = -(-video.frame_count // stride) if video.frame_count else None
        frames = video.frames(stride)
        try:
            with _progress(Path(base).name) as bar:
                task = bar.add_task("frames", total=total, rate="")
                while True:
                    with timer("decode"):
                        chunk = [frame for _, frame in zip(range(batch), frames, strict=False)]
                    if not chunk:
                        break
                    with timer("model"):
                        predictions = predictor.segment([f.image for f in chunk], None, batch,
                                                        maps)
                    with timer("outputs"):
                        for frame, prediction in zip(chunk, predictions, strict=True):
                            outputs.write(frame.index, frame.time, frame.image, prediction)
                    bar.update(task, advance=len(chunk),
                               rate=_rate(timer, outputs.frames, "frames"))
        except KeyboardInterrupt:  # how a webcam or a stream stops: the frames so far, complete
            outputs.close()
            raise
        except BaseException:  # a full disk, a broken stream: nothing half-written stays
            outputs.abort()
            raise
        with timer("outputs"):
            written = outputs.close()
    console.print(f"{source}: {timer.line(outputs.frames, 'frames')} -> "
                  + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
    timer.frames = outputs.frames
    return timer


def _rate(timer: Timer, done: int, what: str) -> str:
    total = sum(timer.seconds.values())
    return f"{done / total:.1f} {what}/s" if total > 0 else ""


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
