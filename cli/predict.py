"""``diga predict``: label maps, colour masks and overlays for images and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image, UnidentifiedImageError
from rich.markup import escape

from diga.cli.common import console, err_console, runtime_warnings
from diga.errors import UserError
from diga.runtime.preprocess import RunSize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


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

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.segmenter(image)


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
                   where: str) -> tuple[np.ndarray | None, np.ndarray, str]:
    """The labels ``predict --classes`` writes: (model id -> written id map, or None for the
    model's own ids; the palette; one line saying which ids the label PNGs hold)."""
    from diga.data.classes import IGNORE_INDEX, class_protocol
    from diga.protocols import parse_protocols, plan_scoring

    requested = parse_protocols(classes)
    if len(requested) > 1:
        raise UserError("predict writes the labels of one protocol: --classes takes one of "
                        "19, 16, 13", f"e.g. --classes {requested[0]}")
    own = f"labels: the model's own {len(names)}-class train ids"
    if not requested:
        return None, palette, own
    scoring = plan_scoring(names, class_protocol(requested[0]), requested, requested[0], where)
    protocol = scoring.protocols[0]
    if protocol.names == names:  # its own protocol, or one with classes it does not predict
        return None, palette, own + ("" if protocol.num_classes == requested[0] else
                                     f" (it has no {requested[0]}-class protocol's full set)")
    outside = scoring.pred_lut == protocol.num_classes  # a class of no id in the protocol
    lut = np.where(outside, IGNORE_INDEX, scoring.pred_lut).astype(np.uint8)
    others = [c for c in names if c not in protocol.names]
    return lut, protocol.palette, (f"labels: {protocol.num_classes}-class train ids, mapped by "
                                   f"class name from the model's {len(names)} ({', '.join(others)}"
                                   f" -> {IGNORE_INDEX})")


def collect_inputs(inputs: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image path, output stem relative to --out) pairs, and notes on what was skipped."""
    found: list[tuple[Path, Path]] = []
    notes: list[str] = []
    for item in inputs:
        if not item.exists():
            raise UserError(f"input not found: {item}", "give image files or folders of images")
        if item.is_dir():
            images = sorted(p for p in item.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            videos = sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            found += [(p, p.relative_to(item).with_suffix("")) for p in images]
            if not images and not videos:
                notes.append(f"no images in folder {item}")
        else:
            videos = [item] if item.suffix.lower() in VIDEO_SUFFIXES else []
            if not videos:
                found.append((item, Path(item.stem)))
        for video in videos:
            notes.append(f"skipped video {video}: reading video needs a video reader (imageio or "
                         "PyAV), and none is installed; extract its frames as images instead")
    seen: dict[Path, Path] = {}
    for path, stem in found:
        if stem in seen:
            raise UserError(f"two inputs would write the same outputs: {seen[stem]} and {path}",
                            "predict them into different --out folders")
        seen[stem] = path
    return found, notes


def _open_error(path: Path, exc: Exception) -> UserError:
    return UserError(f"cannot decode image {path} ({type(exc).__name__})",
                     "the file is corrupt or not an image; replace or remove it")


def check_image(path: Path) -> None:
    """Read only the header: empty, unreadable and zero-size files fail before any work."""
    if path.stat().st_size == 0:
        raise UserError(f"cannot decode image {path}: the file is empty (0 bytes)",
                        "replace or remove the file")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _open_error(path, exc) from None
    if width == 0 or height == 0:
        raise UserError(f"image {path} is empty ({width}x{height} pixels)", "replace or remove it")


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file; one clear error naming the file otherwise."""
    from diga.runtime import to_rgb_uint8

    check_image(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_uint8(im, name=f"image {path}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _open_error(path, exc) from None


def _save_png(path: Path, array: np.ndarray) -> None:
    from diga.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def predict_command(
    model: Annotated[Path, typer.Argument(help="A run directory, checkpoint folder, .onnx or "
                                          ".engine.", show_default=False)],
    inputs: Annotated[list[Path], typer.Argument(help="Images and folders of images.",
                                                 show_default=False)],
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
) -> None:
    """Segment images: label, colour and overlay PNGs for each.

    Writes <stem>_label.png (train ids), <stem>_color.png and <stem>_overlay.png, at each
    image's own size; the model runs at the size it was trained at. Folders are searched
    recursively; their structure is kept under --out. An .onnx, .xml or .engine runs through
    the torch-free runtime, a run directory or checkpoint through PyTorch.

    Example:
      diga predict runs/x/export/model.onnx street.jpg frames/ --out preds
    """
    from diga.runtime import check_backend, colorize, overlay

    check_backend(backend)
    images, notes = collect_inputs(inputs)
    for note in notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if not images:
        raise UserError("no images to predict", f"give image files ({', '.join(IMAGE_SUFFIXES)}) "
                        "or folders holding them")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file", "choose a folder with --out")
    for path, _ in images:
        check_image(path)
    with runtime_warnings():  # e.g. a GPU fallback, or a file without an inference size
        predictor, info, label = _load_predictor(model, backend,
                                                 "native" if native_size else "trained")
    try:
        lut, palette, written = output_classes(info.class_names, info.palette, classes,
                                               model.name)
    except UserError:
        if hasattr(predictor, "close"):
            predictor.close()
        raise
    console.print(f"model: {label}", highlight=False)
    console.print(written, highlight=False)

    from rich.progress import Progress

    from diga.train.progress import bar_columns

    try:
        with Progress(*bar_columns("predict", "name"), console=console, transient=True) as bar:
            task = bar.add_task("predict", total=len(images), name="")
            for path, stem in images:
                bar.update(task, name=path.name)
                rgb = read_rgb(path)
                labels = predictor(rgb) if lut is None else lut[predictor(rgb)]
                base = out / stem
                _save_png(base.with_name(f"{base.name}_label.png"), labels)
                _save_png(base.with_name(f"{base.name}_color.png"), colorize(labels, palette))
                _save_png(base.with_name(f"{base.name}_overlay.png"),
                          overlay(rgb, labels, palette, alpha))
                bar.advance(task)
    finally:
        if hasattr(predictor, "close"):
            predictor.close()
    console.print(f"wrote {3 * len(images)} files for {len(images)} image"
                  f"{'s' if len(images) != 1 else ''} to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
