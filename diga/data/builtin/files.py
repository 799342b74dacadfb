"""Write the built-in benchmark to disk in the GTA5, SYNTHIA and Cityscapes layouts (and, for
domain generalisation, the target domain in the BDD100K and Mapillary Vistas layouts too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from diga.data.builtin.scene import generate_scene
from diga.data.builtin.spec import SPLITS, BuiltinSpec
from diga.data.classes import IGNORE_INDEX, SYNTHIA_TO_TRAIN19, class_protocol
from diga.data.mapillary import TO_CITYSCAPES, UNLABELED, V12_LABELS, v12_config
from diga.errors import UserError

_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
# Height / width of the real datasets' images: GTA5 1052x1914, SYNTHIA-RAND-CITYSCAPES
# 760x1280, Cityscapes 1024x2048. The demo writes each source layout at its dataset's aspect
# ratio and the target's width, so source and target differ in size as they do in the paper.
ASPECT = {"gta5": 1052 / 1914, "synthia": 760 / 1280, "cityscapes": 1024 / 2048}


# The domain-generalisation targets: other scenes of the target domain (the seed + an offset),
# at their datasets' aspect ratios: BDD100K 720x1280; Mapillary Vistas' images come from many
# cameras, so its demo alternates two sizes (4:3 and 16:9, its most common ones).
DG_LAYOUTS = {"bdd100k": (1000, (720 / 1280,)), "mapillary": (2000, (3 / 4, 1080 / 1920))}


def layout_size(layout: str, width: int, index: int = 0) -> tuple[int, int]:
    """(H, W) of a layout's demo image ``index`` at ``width``: the real dataset's aspect ratio."""
    aspects = DG_LAYOUTS[layout][1] if layout in DG_LAYOUTS else (ASPECT[layout],)
    return max(16, round(width * aspects[index % len(aspects)])), width


def dg_spec(spec: BuiltinSpec, layout: str, index: int) -> BuiltinSpec:
    """The benchmark a domain-generalisation target's demo image ``index`` is generated from:
    ``generate_scene(dg_spec(spec, layout, i), "target", split, i)`` is what the demo wrote."""
    return replace(spec, seed=spec.seed + DG_LAYOUTS[layout][0],
                   size=layout_size(layout, spec.size[1], index))


def _mapillary_ids() -> np.ndarray:
    """19-class train id -> Mapillary v1.2 label index (each class's first name; ignore ->
    void--unlabeled)."""
    names = [label[0] for label in V12_LABELS]
    lut = np.full(256, names.index(UNLABELED), np.uint8)
    for train19, cityscapes in enumerate(class_protocol(19).names):
        lut[train19] = names.index(TO_CITYSCAPES[cityscapes][0])
    return lut


def _dg_jobs(out: Path, spec: BuiltinSpec) -> list[tuple[str, str, str, int, Path, Path]]:
    """The BDD100K (10K semantic segmentation) and Mapillary Vistas v1.2 layouts' files: val,
    and a train split as small (for calibration and pseudo-label trials)."""
    jobs = []
    counts = {"val": spec.target_val, "train": min(spec.target_train, spec.target_val)}
    for split, n in counts.items():
        for i in range(n):
            stem = f"{i:08x}-{spec.seed:08x}"  # like BDD100K's 7d2f7975-e0c1c5a7
            jobs.append(("bdd100k", "target", split, i,
                         out / "bdd100k/images/10k" / split / f"{stem}.jpg",
                         out / "bdd100k/labels/sem_seg/masks" / split / f"{stem}.png"))
            key = f"demo{spec.seed:06d}{i:012d}"  # 22 characters, as Mapillary's keys
            folder = out / "mapillary" / {"train": "training", "val": "validation"}[split]
            jobs.append(("mapillary", "target", split, i, folder / "images" / f"{key}.jpg",
                         folder / "labels" / f"{key}.png"))
    return jobs


def _save_mapillary_label(path: Path, indices: np.ndarray) -> None:
    """An 8-bit palettised PNG of v1.2 label indices, its palette the labels' colours."""
    image = Image.fromarray(indices, "P")
    image.putpalette([c for label in V12_LABELS for c in label[2]])
    image.save(path)


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
    out: Path, spec: BuiltinSpec, progress: Callable[[int, int], None] | None = None,
    dg_targets: bool = False,
) -> dict[str, Path]:
    """Write the benchmark to disk in the real layouts, so the file loaders can read it.

    The source domain twice, each at its dataset's aspect ratio (``ASPECT``) and the target's
    width: ``out/gta5/{images,labels}/00001.png`` (labels: Cityscapes label ids, as in GTA5)
    and ``out/synthia/{RGB,GT/LABELS}/00001.png`` (labels: 16-bit RGB, SYNTHIA class id in the
    first channel; terrain, truck and train, which SYNTHIA lacks, become void). The target at
    ``spec.size`` in ``out/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` (target
    train labels are written too, for diagnosis only). Ignored pixels become id 0 (void).

    ``dg_targets``: also other scenes of the target domain (``dg_spec``) in the layouts of the
    domain-generalisation benchmark, each a val split of ``spec.target_val`` images and a train
    split as small: ``out/bdd100k/{images/10k,labels/sem_seg/masks}/{train,val}/`` (JPEG
    images at BDD100K's 720:1280, labels 19-class train ids, 255 ignored) and
    ``out/mapillary/{training,validation}/{images,labels}/`` with ``out/mapillary/config.json``
    (Mapillary Vistas v1.2: its 66 labels, labels palettised PNGs of their indices; each
    class as its first name in ``diga.data.mapillary.TO_CITYSCAPES``, ignored pixels as
    ``void--unlabeled``; 4:3 and 16:9 images alternate).

    Args:
        out: a new or empty folder.
        spec: the benchmark to write (``spec.size`` is the target's size).
        progress: called as ``progress(done, total)`` after each image.
        dg_targets: write the BDD100K and Mapillary layouts too.

    Returns:
        ``{"source_root": out / "gta5", "synthia_root": out / "synthia",
        "target_root": out / "cityscapes"}``, with ``dg_targets`` also
        ``"bdd100k_root": out / "bdd100k", "mapillary_root": out / "mapillary"``.
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
    roots = {"source_root": gta_root, "synthia_root": synthia_root, "target_root": target_root}
    if dg_targets:
        jobs += _dg_jobs(out, spec)
        roots.update(bdd100k_root=out / "bdd100k", mapillary_root=out / "mapillary")
        (out / "mapillary").mkdir(parents=True)
        (out / "mapillary" / "config.json").write_text(json.dumps(v12_config(), indent=1))
    to_mapillary = _mapillary_ids()
    for folder in {p.parent for job in jobs for p in job[4:]}:
        folder.mkdir(parents=True, exist_ok=True)
    for done, (layout, domain, split, i, image_path, label_path) in enumerate(jobs, start=1):
        which = dg_spec(spec, layout, i) if layout in DG_LAYOUTS else specs[layout]
        image, label = generate_scene(which, domain, split, i)
        Image.fromarray(image, "RGB").save(image_path, **(
            {"quality": 95} if image_path.suffix == ".jpg" else {}))
        if layout == "synthia":
            _save_synthia_label(label_path, to_synthia[label])
        elif layout == "mapillary":
            _save_mapillary_label(label_path, to_mapillary[label])
        elif layout == "bdd100k":  # train ids, 255 ignored
            Image.fromarray(np.where(label < 19, label, IGNORE_INDEX).astype(np.uint8), "L").save(
                label_path)
        else:
            Image.fromarray(to_label_id[label], "L").save(label_path)
        if progress is not None:
            progress(done, len(jobs))
    return roots
