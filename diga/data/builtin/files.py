"""Write the built-in benchmark to disk in the GTA5 and Cityscapes layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from diga.data.builtin.scene import generate_scene
from diga.data.builtin.spec import SPLITS, BuiltinSpec
from diga.data.classes import class_protocol
from diga.errors import UserError

_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def write_demo(
    out: Path, spec: BuiltinSpec, progress: Callable[[int, int], None] | None = None
) -> dict[str, Path]:
    """Write the benchmark to disk in the real layouts, so the file loaders can read it.

    ``out/gta5/{images,labels}/00001.png`` hold the source (labels: Cityscapes label ids, as in
    GTA5); ``out/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` the target (target train
    labels are written too, for diagnosis only). Ignored pixels become label id 0 (unlabeled).

    Args:
        out: a new or empty folder.
        spec: the benchmark to write.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        ``{"source_root": out / "gta5", "target_root": out / "cityscapes"}``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder",
                        hint="choose a new or empty folder for the demo data")  # fmt: skip
    to_label_id = np.zeros(256, np.uint8)  # train id -> Cityscapes label id; ignore -> 0
    to_label_id[:19] = class_protocol(19).train_to_label_id
    source_root, target_root = out / "gta5", out / "cityscapes"
    jobs: list[tuple[str, str, int, Path, Path]] = []
    for i in range(spec.source_train):
        name = f"{i + 1:05d}.png"
        jobs.append(
            ("source", "train", i, source_root / "images" / name, source_root / "labels" / name)
        )
    for split in SPLITS["target"]:
        cities = _CITIES[split]
        for i in range(spec.count("target", split)):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19:06d}"
            jobs.append(("target", split, i,
                         target_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         target_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))  # fmt: skip
    for folder in {p.parent for job in jobs for p in job[3:]} | {source_root, target_root}:
        folder.mkdir(parents=True, exist_ok=True)
    for done, (domain, split, i, image_path, label_path) in enumerate(jobs, start=1):
        image, label = generate_scene(spec, domain, split, i)
        Image.fromarray(image, "RGB").save(image_path)
        Image.fromarray(to_label_id[label], "L").save(label_path)
        if progress is not None:
            progress(done, len(jobs))
    return {"source_root": source_root, "target_root": target_root}
