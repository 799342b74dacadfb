"""Frames in and out with PyAV (FFmpeg): video files, webcams and network streams.

    with open_video("drive.mp4") as video:          # or 0 (a webcam), "rtsp://..." / "http://..."
        for frame in video.frames(stride=2):         # index, time in seconds, RGB uint8 (H, W, 3)
            ...

``VideoWriter`` encodes RGB frames at a given rate (H.264 where FFmpeg has libx264, else
MPEG-4 Part 2). PyAV is the optional extra ``diga[video]``; without it, opening a video is one
clear error that says how to install it.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from diga.errors import UserError, import_optional

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
INSTALL_HINT = "pip install 'diga[video]' (PyAV, FFmpeg's Python bindings; or pip install av)"


def require_av() -> Any:
    """The ``av`` module, or one clear error saying how to install it."""
    return import_optional("av", "reading and writing video needs PyAV, which is not installed",
                           INSTALL_HINT)


def is_stream(source: Any) -> bool:
    """A webcam index (an int, or digits) or a network URL: frames that are not a file."""
    if isinstance(source, int):
        return True
    text = str(source)
    return text.isdigit() or text.lower().startswith(STREAM_SCHEMES)


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _webcam(index: int) -> tuple[str, str | None]:
    """FFmpeg's device name and input format for webcam ``index`` on this system."""
    system = platform.system()
    if system == "Linux":
        return f"/dev/video{index}", "v4l2"
    if system == "Darwin":
        return str(index), "avfoundation"
    if system == "Windows":
        return f"video={index}", "dshow"  # dshow wants a device name; an index works on some
    raise UserError(f"no webcam input known for {system}", "give a video file or a stream URL")


@dataclass
class Frame:
    """One frame: its index in the source, its time in seconds (None where the source has no
    clock, e.g. a list of images), RGB uint8 (H, W, 3)."""

    index: int
    time: float | None
    image: np.ndarray


class VideoSource:
    """A video file, a webcam or a network stream, decoded frame by frame."""

    def __init__(self, source: str | Path | int) -> None:
        av = require_av()
        self.name = str(source)
        options: dict[str, Any] = {}
        if isinstance(source, int) or str(source).isdigit():
            url, fmt = _webcam(int(source))
            options["format"] = fmt
        else:
            url = str(source)
            if not is_stream(source) and not Path(url).is_file():
                raise UserError(f"video not found: {url}", "give a video file, a webcam index or "
                                "a stream URL (rtsp://, http://)")
            if url.lower().startswith("rtsp"):
                options["options"] = {"rtsp_transport": "tcp"}  # fewer lost packets than UDP
        try:
            self._container = av.open(url, **options)
        except (av.FFmpegError, OSError) as exc:
            reason = _reason(exc)
            raise UserError(f"cannot open video {self.name}: {reason}",
                            "check the path, device or URL, and that FFmpeg can decode it") from None
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"{self.name} has no video stream", "give a file with video in it")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's frame/slice threads: decoding keeps up
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps: Fraction | None = Fraction(rate) if rate else None
        self.frame_count: int | None = self._stream.frames or None  # 0: unknown (streams)
        self.size = (self._stream.codec_context.height, self._stream.codec_context.width)

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Every ``stride``-th frame (0, stride, 2*stride, ...), decoded to RGB."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        av = require_av()
        base = self._stream.time_base
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                if index % stride:
                    continue
                time = float(frame.pts * base) if frame.pts is not None and base else (
                    index / float(self.fps) if self.fps else 0.0)
                yield Frame(index, time, frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as exc:
            reason = _reason(exc)
            raise UserError(f"cannot decode {self.name}: {reason}",
                            "the file is damaged or the stream ended; re-encode or check the URL"
                            ) from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(source: str | Path | int) -> VideoSource:
    return VideoSource(source)


class VideoWriter:
    """RGB frames (H, W, 3) uint8 into a video file at ``fps``: H.264 (libx264) where FFmpeg
    has it, else MPEG-4 Part 2; yuv420p, so odd sizes are encoded in 4:4:4 (libx264 only)."""

    def __init__(self, path: Path, fps: Fraction | float, size: tuple[int, int]) -> None:
        av = require_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        height, width = size
        even = height % 2 == 0 and width % 2 == 0
        codec = "libx264" if _has_encoder(av, "libx264") else "mpeg4"
        if not even and codec != "libx264":
            raise UserError(f"cannot encode a {width}x{height} video without libx264 (MPEG-4 "
                            "needs even sizes)", "install a PyAV built with libx264")
        rate = Fraction(fps).limit_denominator(1001 * 1000)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
        if codec == "libx264":
            self._stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            self._stream.bit_rate = 8 * width * height * max(1, round(float(rate)))
        self._av = av

    def write(self, image: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    """FFmpeg's reason without the file name it repeats."""
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"\s+", " ", text).strip()[:200]


def _has_encoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # av.codec.codec.UnknownCodecError; its module moved between versions
        return False
    return True
