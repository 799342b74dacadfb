"""``diga predict``: labels, colour masks, overlays and class reports for images and videos."""

from __future__ import annotations

from collections.abc import Callable
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
    Undecodable,
    VideoOutputs,
    check_image,
    check_video,
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
        "in [0, 1]) as a heat map (0-255) with its colour bar beside the overlay: "
        "<stem>_uncertainty (.png; .mp4 for videos).")] = False,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Videos: predict every N-th "
                                        "frame; the outputs run at the rate / N.")] = 1,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images or frames per model "
                                       "call.")] = 4,
    save_frames: Annotated[bool, typer.Option(
        "--save-frames", help="Videos: also write each frame's label PNG, "
        "<index>_label.png in <stem>_frames/.")] = False,
    legend: Annotated[bool, typer.Option("--legend/--no-legend", help="Draw the class legend "
                                         "(classes over 1% of the image) on overlays.")] = True,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Stop at the first image or video file that cannot be decoded (exit "
        "code 1) instead of skipping it with a warning.")] = False,
) -> None:
    """Segment images and videos: labels, colour masks, overlays and class reports.

    For an image: <stem>_label.png (train ids), <stem>_color.png, <stem>_overlay.png (with a
    class legend) and <stem>.json (each class's share of the image and mean confidence), at
    the image's own size; the model runs at the size it was trained at. For a video, a webcam
    or a stream: <stem>_overlay.mp4 (the same size, the source's frame rate divided by
    --stride) and <stem>.jsonl, a line per frame. Folders are searched recursively and their
    structure is kept under --out. A file that cannot be decoded is skipped with a warning
    (--strict: stops); the exit code is 1 only when nothing could be predicted. Videos need
    PyAV (pip install 'diga[video]'). An .onnx,
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
    skipped = Skipped(strict, len(found.images) + len(found.videos))
    if found.videos:
        require_av()  # before the model loads: one line saying how to install PyAV
        found.videos = [(source, stem) for source, stem in found.videos
                        if is_stream(source) or skipped.ok(check_video, source)]
    found.images = [(path, stem) for path, stem in found.images
                    if skipped.ok(check_image, path)]  # headers: before any output
    skipped.check_any_left(len(found.images) + len(found.videos))
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
            _predict_images(predictor, found.images, out, look, batch, maps, str(model), skipped)
            skipped.check_any_left(skipped.predicted + len(found.videos))
        for source, stem in found.videos:
            _predict_video(predictor, source, out / stem, look, batch, stride, maps, save_frames)
        if skipped.files and not skipped.predicted:  # else the images' line said it
            console.print(f"skipped {skipped.count_line()}", highlight=False)
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


class Skipped:
    """The input files that cannot be decoded: each a warning line as it is met and skipped (a
    camera folder with one damaged frame still gets the rest), or with ``strict`` the first
    stops the command. Nothing predicted at all is an error, never a silent exit code 0."""

    def __init__(self, strict: bool, inputs: int) -> None:
        self.strict, self.inputs = strict, inputs
        self.files: list[Undecodable] = []
        self.predicted = 0

    def skip(self, exc: Undecodable) -> None:
        if self.strict:
            raise exc
        if self.inputs > 1:  # a lone input: its own error line says it (check_any_left)
            err_console.print(f"[yellow]warning:[/] {escape(exc.warning)}", highlight=False,
                              soft_wrap=True)
        self.files.append(exc)

    def ok(self, check: Callable[[Any], None], item: Any) -> bool:
        """Whether ``check(item)`` passes; where not, the file is warned about and skipped."""
        try:
            check(item)
            return True
        except Undecodable as exc:
            self.skip(exc)
            return False

    def read(self, path: Path) -> np.ndarray | None:
        """The image's pixels, or None where they cannot be decoded (skipped)."""
        try:
            return read_rgb(path)
        except Undecodable as exc:
            self.skip(exc)
            return None

    def check_any_left(self, left: int) -> None:
        """Raises where every input was skipped: the file's own error for a lone one."""
        if left or not self.files:
            return
        if len(self.files) == 1:
            raise self.files[0]
        raise UserError(f"none of the {len(self.files)} input files could be decoded (each is "
                        "named above)", "replace or remove them, or check the paths given")

    def count_line(self) -> str:
        n = len(self.files)
        return f"{n} undecodable file{'s' if n != 1 else ''}"


def _predict_images(predictor: Any, images: list[tuple[Path, Path]], out: Path, look: Look,
                    batch: int, maps: bool, model: str, skipped: Skipped) -> None:
    timer, files, done = Timer(), 0, 0
    with _progress("images") as bar:
        task = bar.add_task("images", total=len(images), rate="")
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            with timer("decode"):
                decoded = [(stem, rgb) for path, stem in chunk
                           if (rgb := skipped.read(path)) is not None]
            if decoded:
                with timer("model"):
                    predictions = predictor.segment([rgb for _, rgb in decoded], None, batch, maps)
                with timer("outputs"):
                    for (stem, rgb), prediction in zip(decoded, predictions, strict=True):
                        files += write_image_outputs(out / stem, rgb, prediction, look, model)
            done += len(decoded)
            bar.update(task, advance=len(chunk), rate=_rate(timer, done, "img"))
    skipped.predicted = done
    if not done:
        return
    skip = f", skipped {skipped.count_line()}" if skipped.files else ""
    console.print(f"wrote {files} files for {done} image{'s' if done != 1 else ''} to {out}"
                  f"{skip}; {timer.line(done, 'images')}", highlight=False, soft_wrap=True)


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
