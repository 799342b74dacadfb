"""Write the built-in benchmark to disk in the GTA5, SYNTHIA and Cityscapes layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from diga.data.builtin.scene import generate_scene
from diga.data.builtin.spec import SPLITS, BuiltinSpec
from diga.data.classes import SYNTHIA_TO_TRAIN19, class_protocol
from diga.errors import UserError

_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
# Height / width of the real datasets' images: GTA5 1052x1914, SYNTHIA-RAND-CITYSCAPES
# 760x1280, Cityscapes 1024x2048. The demo writes each source layout at its dataset's aspect
# ratio and the target's width, so source and target differ in size as they do in the paper.
ASPECT = {"gta5": 1052 / 1914, "synthia": 760 / 1280, "cityscapes": 1024 / 2048}


def layout_size(layout: str, width: int) -> tuple[int, int]:
    """(H, W) of a layout's demo images at ``width``: the real dataset's aspect ratio."""
    return max(16, round(width * ASPECT[layout])), width


def _synthia_ids() -> np.ndarray:
    """19-class train id -> SYNTHIA class id (terrain, truck, train and ignore -> 0, void)."""
    lut = np.zeros(256, np.uint16)
    for synthia_id, train19 in SYNTHIA_TO_TRAIN19.items():
        lut[train19] = synthia_id
    return lut


def _save_synthia_label(path: Path, ids: np.ndarray) -> None:
    """A 16-bit RGB PNG with the class id in the first channel, as SYNTHIA's GT/LABELS."""
    import png  # pypng: Pillow cannot write 16-bit RGB

    h, w = ids.shape
    rgb = np.zeros((h, w, 3), np.uint16)
    rgb[..., 0] = ids
    rgb[..., 1] = np.arange(h * w, dtype=np.uint16).reshape(h, w) % 97  # instance-like ids
    with open(path, "wb") as fh:
        png.Writer(w, h, greyscale=False, bitdepth=16).write(fh, rgb.reshape(h, w * 3).tolist())


def write_demo(
    out: Path, spec: BuiltinSpec, progress: Callable[[int, int], None] | None = None
) -> dict[str, Path]:
    """Write the benchmark to disk in the real layouts, so the file loaders can read it.

    The source domain twice, each at its dataset's aspect ratio (``ASPECT``) and the target's
    width: ``out/gta5/{images,labels}/00001.png`` (labels: Cityscapes label ids, as in GTA5)
    and ``out/synthia/{RGB,GT/LABELS}/00001.png`` (labels: 16-bit RGB, SYNTHIA class id in the
    first channel; terrain, truck and train, which SYNTHIA lacks, become void). The target at
    ``spec.size`` in ``out/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` (target
    train labels are written too, for diagnosis only). Ignored pixels become id 0 (void).

    Args:
        out: a new or empty folder.
        spec: the benchmark to write (``spec.size`` is the target's size).
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        ``{"source_root": out / "gta5", "synthia_root": out / "synthia",
        "target_root": out / "cityscapes"}``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder",
                        hint="choose a new or empty folder for the demo data")  # fmt: skip
    to_label_id = np.zeros(256, np.uint8)  # train id -> Cityscapes label id; ignore -> 0
    to_label_id[:19] = class_protocol(19).train_to_label_id
    to_synthia = _synthia_ids()
    gta_root, synthia_root, target_root = out / "gta5", out / "synthia", out / "cityscapes"
    width = spec.size[1]
    specs = {"gta5": replace(spec, size=layout_size("gta5", width)),
             "synthia": replace(spec, size=layout_size("synthia", width)), "cityscapes": spec}
    jobs: list[tuple[str, str, str, int, Path, Path]] = []
    for i in range(spec.source_train):
        name = f"{i + 1:05d}.png"
        jobs.append(("gta5", "source", "train", i, gta_root / "images" / name,
                     gta_root / "labels" / name))
        jobs.append(("synthia", "source", "train", i, synthia_root / "RGB" / name,
                     synthia_root / "GT" / "LABELS" / name))
    for split in SPLITS["target"]:
        cities = _CITIES[split]
        for i in range(spec.count("target", split)):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19:06d}"
            jobs.append(("cityscapes", "target", split, i,
                         target_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         target_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))  # fmt: skip
    for folder in {p.parent for job in jobs for p in job[4:]}:
        folder.mkdir(parents=True, exist_ok=True)
    for done, (layout, domain, split, i, image_path, label_path) in enumerate(jobs, start=1):
        image, label = generate_scene(specs[layout], domain, split, i)
        Image.fromarray(image, "RGB").save(image_path)
        if layout == "synthia":
            _save_synthia_label(label_path, to_synthia[label])
        else:
            Image.fromarray(to_label_id[label], "L").save(label_path)
        if progress is not None:
            progress(done, len(jobs))
    return {"source_root": gta_root, "synthia_root": synthia_root, "target_root": target_root}
