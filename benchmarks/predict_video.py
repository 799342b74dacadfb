"""Frames per second of ``diga predict`` on a video, and what bounds it.

Writes a clip of the built-in benchmark's target frames at each size (PyAV, 10 fps), then runs
``diga predict``'s video path on it with an exported model on onnxruntime's CPU provider, and
splits the time into decoding, the model (resize, normalise, network, logits to labels and
confidence at the frame's size) and outputs (class report, overlay with legend, encoding,
JSON lines). Each size runs at the model's trained scale (what a deployed model does) unless
``--native``.

    python -m diga.benchmarks.predict_video runs/demo/export/model.onnx --sizes 64x128 256x512
"""

from __future__ import annotations

import argparse
import json
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def write_clip(path: Path, size: tuple[int, int], frames: int, seed: int = 0) -> Path:
    """Target-domain street scenes of the built-in benchmark, resized to ``size``, as a video."""
    from PIL import Image

    from diga.data.builtin import BuiltinSpec, generate_scene
    from diga.runtime.video import VideoWriter

    spec = BuiltinSpec(seed=seed, size=(64, 128), target_val=frames)
    with VideoWriter(path, Fraction(10), size) as writer:
        for i in range(frames):
            image, _ = generate_scene(spec, "target", "val", i)
            writer.write(np.asarray(Image.fromarray(image).resize((size[1], size[0]),
                                                                  Image.Resampling.BILINEAR)))
    return path


def measure(model: Path, size: tuple[int, int], frames: int, batch: int, native: bool,
            uncertainty: bool, work: Path) -> dict[str, Any]:
    from diga.cli.predict import _predict_video
    from diga.cli.predict_io import Look
    from diga.runtime import Segmenter

    clip = write_clip(work / f"clip_{size[0]}x{size[1]}.mp4", size, frames)
    with Segmenter(model, "cpu", "native" if native else "trained") as seg:
        look = Look(None, seg.info.class_names, seg.info.palette, uncertainty=uncertainty)
        maps = uncertainty or (seg.info.output_kind == "logits" and seg.info.input_kind != "frame")
        _predict_video(seg, str(clip), work / "warm", look, batch, 1, maps, False)  # warm-up
        timer = _predict_video(seg, str(clip), work / f"out_{size[0]}", look, batch, 1, maps,
                               False)
        run = seg.run_size(size)
    total = sum(timer.seconds.values())
    return {"size": list(size), "runs_at": list(run), "frames": timer.frames,
            "fps": timer.frames / total, "seconds": dict(timer.seconds),
            "share": {k: v / total for k, v in timer.seconds.items()},
            "bound_by": max(timer.seconds, key=timer.seconds.get)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported .onnx (or .xml)")
    parser.add_argument("--sizes", nargs="+", default=["64x128", "256x512"])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--native", action="store_true", help="run at each frame's own size")
    parser.add_argument("--uncertainty", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from diga.config import parse_size

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            rows.append(measure(args.model, parse_size(text), args.frames, args.batch,
                                args.native, args.uncertainty, Path(tmp)))
    print("| video | model runs at | frames/s | decode | model | outputs | bound by |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = r["share"]
        print(f"| {r['size'][0]}x{r['size'][1]} | {r['runs_at'][0]}x{r['runs_at'][1]} | "
              f"{r['fps']:.1f} | {share['decode']:.0%} | {share['model']:.0%} | "
              f"{share['outputs']:.0%} | {r['bound_by']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
