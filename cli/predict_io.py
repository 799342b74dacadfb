"""What ``diga predict`` reads and writes: inputs found from paths, folders, globs, webcams
and URLs; each image's and each video's outputs; the time each part takes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from diga.errors import UserError
from diga.runtime.draw import draw_legend, heatmap, to_uint8, with_colour_bar
from diga.runtime.prediction import Prediction, class_report
from diga.runtime.video import VIDEO_SUFFIXES, is_stream, is_video_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GLOB_CHARS = ("*", "?", "[")


@dataclass
class Inputs:
    """Images (path, output stem) and videos (file path, webcam index or URL; output stem)."""

    images: list[tuple[Path, Path]] = field(default_factory=list)
    videos: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stream_stem(source: str) -> Path:
    """``0`` -> ``webcam0``; ``rtsp://cam.local:554/live`` -> ``cam_local_554_live``."""
    if source.isdigit():
        return Path(f"webcam{source}")
    return Path(re.sub(r"[^A-Za-z0-9]+", "_", source.split("://", 1)[-1]).strip("_")[:60]
                or "stream")


def _add_file(found: Inputs, path: Path, stem: Path) -> None:
    if is_video_file(path):
        found.videos.append((str(path), stem))
    else:
        found.images.append((path, stem))


def collect_inputs(items: list[str]) -> Inputs:
    """Every input the user named: files, folders (searched recursively, their structure kept
    in the output stems), glob patterns (``'frames/*.png'``, ``'**/*.mp4'``), webcam indices
    and stream URLs. Two inputs that would write the same outputs are refused."""
    found = Inputs()
    for item in items:
        path = Path(item)
        if is_stream(item) and not path.exists():
            found.videos.append((item, stream_stem(item)))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            for p in files:
                _add_file(found, p, p.relative_to(path).with_suffix(""))
            if not files:
                found.notes.append(f"no images or videos in folder {path}")
        elif path.is_file():
            _add_file(found, path, Path(path.stem))
        elif any(c in item for c in GLOB_CHARS):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file()
                     and m.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not files:
                raise UserError(f"no images or videos match the pattern {item}",
                                "check the pattern (quote it, so that the shell passes it on)")
            for p in files:
                _add_file(found, p, Path(p.stem))
        else:
            raise UserError(f"input not found: {item}", "give image or video files, folders, a "
                            "glob pattern, a webcam index or a stream URL")
    seen: dict[Path, str] = {}
    for source, stem in [*((str(p), s) for p, s in found.images), *found.videos]:
        if stem in seen:
            raise UserError(f"two inputs would write the same outputs: {seen[stem]} and {source}",
                            "predict them into different --out folders")
        seen[stem] = source
    return found


class Undecodable(UserError):
    """An input file that cannot be decoded: ``diga predict`` skips it with a warning line
    (``--strict``: stops, as any ``UserError``). ``detail`` says why, without the path."""

    def __init__(self, path: Path | str, detail: str, message: str | None = None,
                 hint: str = "the file is corrupt or not an image; replace or remove it") -> None:
        super().__init__(message or f"cannot decode image {path} ({detail})", hint)
        self.path, self.detail = path, detail

    @property
    def warning(self) -> str:
        return f"skipped {self.path}: cannot decode ({self.detail})"


def _open_error(path: Path, exc: Exception) -> Undecodable:
    if isinstance(exc, UnidentifiedImageError):  # its text repeats the path
        return Undecodable(path, "not an image Pillow can read")
    text = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    return Undecodable(path, text or type(exc).__name__)  # e.g. image file is truncated


def check_image(path: Path) -> None:
    """Read only the header: empty, unreadable and zero-size files fail before any work.

    Raises:
        Undecodable: naming the file and why.
    """
    if path.stat().st_size == 0:
        raise Undecodable(path, "the file is empty, 0 bytes")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _open_error(path, exc) from None
    if width == 0 or height == 0:
        raise Undecodable(path, f"it is empty, {width}x{height} pixels")


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file.

    Raises:
        Undecodable: naming the file, where its header or its pixels cannot be decoded.
    """
    from diga.runtime import to_rgb_uint8

    check_image(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_uint8(im, name=f"image {path}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _open_error(path, exc) from None


def check_video(source: str) -> None:
    """Open a video file and close it: a damaged one fails before any work.

    Raises:
        Undecodable: naming the file and why (FFmpeg's reason, or no video stream).
    """
    from diga.runtime.video import open_video

    try:
        open_video(source).close()
    except UserError as exc:
        detail = exc.message.replace(f"cannot open video {source}: ", "").replace(source, "it")
        raise Undecodable(source, detail, exc.message, exc.hint or "") from None


def save_png(path: Path, array: np.ndarray) -> None:
    from diga.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


class Timer:
    """Seconds spent per part (decode, model, outputs), summed over a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.frames = 0  # what was timed

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def line(self, frames: int, what: str) -> str:
        total = sum(self.seconds.values())
        rate = f" ({frames / total:.1f} {what}/s)" if total > 0 else ""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        return f"{frames} {what} in {total:.2f} s{rate}: {parts}"


@dataclass
class Look:
    """How outputs look: the written label ids (``lut``: model id -> written id, or None),
    their names and palette, the overlay's opacity, the legend, the uncertainty map."""

    lut: np.ndarray | None
    names: tuple[str, ...]
    palette: np.ndarray
    alpha: float = 0.5
    legend: bool = True
    uncertainty: bool = False

    def labels(self, prediction: Prediction) -> Prediction:
        if self.lut is None:
            return prediction
        return Prediction(self.lut[prediction.labels], prediction.confidence,
                          prediction.uncertainty)

    def overlay(self, rgb: np.ndarray, prediction: Prediction,
                report: dict[str, Any]) -> np.ndarray:
        from diga.runtime import overlay

        picture = overlay(rgb, prediction.labels, self.palette, self.alpha)
        if self.legend:
            rows = [(name, tuple(int(v) for v in self.palette[c["id"]]), c["area"])
                    for name, c in report["classes"].items() if c["id"] < len(self.palette)]
            picture = draw_legend(picture, rows)
        return picture


def write_image_outputs(base: Path, rgb: np.ndarray, prediction: Prediction,
                        look: Look, model: str) -> int:
    """``<stem>_label.png``, ``_color.png``, ``_overlay.png`` (next to the uncertainty heat map
    with its colour bar, with --uncertainty), ``_uncertainty.png`` (uint8, 255 = flat logits)
    and ``<stem>.json`` (class areas and confidences); returns the count of files."""
    from diga.io import atomic_write_json
    from diga.runtime import colorize

    prediction = look.labels(prediction)
    report = class_report(prediction, look.names)
    picture = look.overlay(rgb, prediction, report)
    save_png(base.with_name(f"{base.name}_label.png"), prediction.labels)
    save_png(base.with_name(f"{base.name}_color.png"), colorize(prediction.labels, look.palette))
    written = 4
    if look.uncertainty and prediction.uncertainty is not None:
        save_png(base.with_name(f"{base.name}_uncertainty.png"), to_uint8(prediction.uncertainty))
        picture = np.concatenate([picture, with_colour_bar(heatmap(prediction.uncertainty))], 1)
        written += 1
    save_png(base.with_name(f"{base.name}_overlay.png"), picture)
    atomic_write_json(base.with_name(f"{base.name}.json"), {"model": model, **report})
    return written


class VideoOutputs:
    """A video's outputs, written frame by frame: ``<stem>_overlay.mp4`` (same size, the
    source's rate / stride), ``<stem>.jsonl`` (a line per frame), with --uncertainty
    ``<stem>_uncertainty.mp4``, with --save-frames ``<stem>_frames/<index>_label.png``. The
    videos are written under a temporary name and renamed when complete."""

    def __init__(self, base: Path, fps: Fraction, size: tuple[int, int], look: Look,
                 save_frames: bool) -> None:
        from diga.runtime.video import VideoWriter

        self.base, self.look, self.save_frames = base, look, save_frames
        self.frames = 0
        self._writers: dict[Path, VideoWriter] = {}
        for name, wanted in (("overlay", True), ("uncertainty", look.uncertainty)):
            if wanted:
                final = base.with_name(f"{base.name}_{name}.mp4")
                self._writers[final] = VideoWriter(final.with_name(f".{final.name}.partial.mp4"),
                                                   fps, size)
        self._jsonl = base.with_name(f"{base.name}.jsonl")
        self._partial_jsonl = base.with_name(f".{base.name}.partial.jsonl")
        self._jsonl.parent.mkdir(parents=True, exist_ok=True)
        self._lines = self._partial_jsonl.open("w")

    def write(self, index: int, time_s: float | None, rgb: np.ndarray,
              prediction: Prediction) -> None:
        prediction = self.look.labels(prediction)
        report = class_report(prediction, self.look.names)
        writers = iter(self._writers.values())
        next(writers).write(self.look.overlay(rgb, prediction, report))
        if self.look.uncertainty and prediction.uncertainty is not None:
            next(writers).write(with_colour_bar(heatmap(prediction.uncertainty)))
        if self.save_frames:
            save_png(self.base.with_name(f"{self.base.name}_frames") / f"{index:06d}_label.png",
                     prediction.labels)
        record = {"frame": index, "time": None if time_s is None else round(time_s, 6), **report}
        self._lines.write(json.dumps(record) + "\n")
        self._lines.flush()
        self.frames += 1

    def close(self) -> list[Path]:
        """Finish the videos and the JSON lines and put them in place (complete files of the
        frames so far: also after Ctrl-C); the files written."""
        try:
            self._lines.close()
            for writer in self._writers.values():
                writer.close()
        except BaseException:  # a full disk while flushing: no file half-written in place
            self.abort()
            raise
        os.replace(self._partial_jsonl, self._jsonl)
        for final, writer in self._writers.items():
            os.replace(writer.path, final)
        return [self._jsonl, *self._writers]

    def abort(self) -> None:
        """After an error (a full disk): remove the partial files; none is taken as complete."""
        for closing in (self._lines.close, *(w.close for w in self._writers.values())):
            with contextlib.suppress(Exception):  # a full disk fails the flush too
                closing()
        for partial in (self._partial_jsonl, *(w.path for w in self._writers.values())):
            partial.unlink(missing_ok=True)
