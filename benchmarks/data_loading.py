"""Data loading at real resolution: can the workers feed one GPU's training step?

Writes GTA5-size (1052x1914) and Cityscapes-size (1024x2048) PNGs in the real on-disk layouts
(built-in scenes, with grain or camera noise that gives PNGs of real size: 3-4 MB), then reads them
through the real loaders with the paper preset's resize, random scale and crop
(``gta2cs-deeplabv2``: GTA5 to 720x1280, Cityscapes to 512x1024, U(0.5, 1.5), crop 512x896),
in one process, as one DataLoader worker does. Reports images/s per worker, split into PNG
decoding and the rest, the PNG decoders side by side (Pillow, which the loaders use;
torchvision.io; OpenCV where installed), and how many workers one step needs at a given step
time. Run:

    python -m diga.benchmarks.data_loading [--images 6] [--step-s 0.5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

GTA5_SIZE, CITYSCAPES_SIZE = (1052, 1914), (1024, 2048)


def write_trees(root: Path, images: int) -> tuple[Path, Path]:
    """``root/gta5`` and ``root/cityscapes`` with ``images`` image/label pairs each."""
    from diga.data.builtin import BuiltinSpec, generate_scene
    from diga.data.classes import class_protocol

    to_label_id = np.zeros(256, np.uint8)  # train id -> Cityscapes label id; ignore -> 0
    to_label_id[:19] = class_protocol(19).train_to_label_id
    gta, cs = root / "gta5", root / "cityscapes"
    noise = np.random.default_rng(0)
    for i in range(images):
        name = f"{i + 1:05d}.png"
        image, label = generate_scene(BuiltinSpec(size=GTA5_SIZE), "source", "train", i)
        # the source's clean rendering compresses to 0.2 MB; grain gives a real GTA5 file's size
        grain = noise.integers(-6, 7, image.shape, dtype=np.int16)
        _save(gta / "images" / name, np.clip(image + grain, 0, 255).astype(np.uint8))
        _save(gta / "labels" / name, to_label_id[label])
        image, label = generate_scene(BuiltinSpec(size=CITYSCAPES_SIZE), "target", "train", i)
        stem = f"aachen_{i:06d}_000019"
        _save(cs / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", image)
        _save(cs / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", to_label_id[label])
    for folder in ("leftImg8bit", "gtFine"):  # an empty val split: the loaders need the folder
        (cs / folder / "val" / "aachen").mkdir(parents=True, exist_ok=True)
    return gta, cs


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def decoders() -> dict[str, Any]:
    """PNG file -> RGB uint8 (H, W, 3), by each decoder available here."""
    def pillow(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))

    def torchvision_io(path: Path) -> np.ndarray:
        import torchvision.io as tio

        return tio.decode_png(tio.read_file(str(path)), tio.ImageReadMode.RGB).permute(1, 2, 0).numpy()

    out = {"pillow": pillow, "torchvision.io": torchvision_io}
    try:
        import cv2

        def opencv(path: Path) -> np.ndarray:
            return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

        out["opencv"] = opencv
    except ImportError:
        pass
    return out


def _per_image(fn, items: list, repeat: int = 2) -> float:
    fn(items[0])  # first call: imports, allocations
    tic = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - tic) / (repeat * len(items))


def measure(images: int = 6, step_s: float = 0.5) -> dict[str, Any]:
    from diga.config import load_config
    from diga.data.datasets import build_dataset

    torch.set_num_threads(1)  # a DataLoader worker runs one thread
    with tempfile.TemporaryDirectory() as tmp:
        gta, cs = write_trees(Path(tmp), images)
        cfg = load_config("gta2cs-deeplabv2", [f"data.source.root={gta}",
                                               f"data.target.root={cs}"])
        result: dict[str, Any] = {"images": images, "crop": list(cfg.train.crop),
                                  "scale_range": list(cfg.data.scale_range), "domains": {}}
        for domain, size in (("source", GTA5_SIZE), ("target", CITYSCAPES_SIZE)):
            dataset = build_dataset(cfg, domain, "train", train=True)
            paths = [s.image for s in dataset.samples]
            item_s = _per_image(lambda i, ds=dataset: ds[(i, 1000 + i)], list(range(len(dataset))))
            decode = {name: _per_image(fn, paths) for name, fn in decoders().items()}
            resize = (cfg.data.source if domain == "source" else cfg.data.target).resize
            result["domains"][domain] = {
                "size": list(size), "resize": list(resize), "png_mb": float(np.mean(
                    [p.stat().st_size for p in paths]) / 1e6),
                "images_per_s_per_worker": 1 / item_s, "item_ms": item_s * 1000,
                "decode_ms": {k: v * 1000 for k, v in decode.items()},
            }
    # one step reads a source and a target batch (warm-up with FDA, self-training)
    per_step = cfg.train.batch_size
    worker_s = sum(per_step / d["images_per_s_per_worker"] for d in result["domains"].values())
    result.update(step_s=step_s, batch_size=per_step, worker_s_per_step=worker_s,
                  workers_needed=worker_s / step_s, workers_per_loader=cfg.data.num_workers)
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = []
    for domain, d in r["domains"].items():
        dec = ", ".join(f"{k} {v:.0f} ms" for k, v in d["decode_ms"].items())
        lines.append(f"{domain:>6} {d['size'][0]}x{d['size'][1]} PNG ({d['png_mb']:.1f} MB) -> "
                     f"resize {d['resize'][0]}x{d['resize'][1]}, scale, crop: "
                     f"{d['images_per_s_per_worker']:.1f} images/s per worker "
                     f"({d['item_ms']:.0f} ms an image; PNG decode: {dec})")
    lines.append(f"one step reads {r['batch_size']} source + {r['batch_size']} target images: "
                 f"{r['worker_s_per_step']:.2f} s of one worker; at {r['step_s']} s a step that "
                 f"needs {r['workers_needed']:.1f} workers (the preset runs "
                 f"{r['workers_per_loader']} per loader, 2 loaders)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--step-s", type=float, default=0.5,
                        help="the GPU step time to feed (from 'python -m diga.benchmarks.gpu')")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.images, args.step_s)
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
