"""Real on-disk dataset layouts: find (image, label) pairs and decode labels to train ids.

GTA5         ``images/*.png``, ``labels/*.png`` (Cityscapes label ids, 8-bit)
SYNTHIA      ``RGB/*.png``, ``GT/LABELS/*.png`` (16-bit, SYNTHIA class id in the first channel)
Cityscapes   ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``,
             ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
BDD100K      ``images/10k/<split>/*.jpg``, ``labels/sem_seg/masks/<split>/<stem>.png`` (the 10K
             semantic segmentation set; 8-bit Cityscapes train ids, 255 ignored); the older
             download's ``seg/images/<split>/``, ``seg/labels/<split>/<stem>_train_id.png`` too
Mapillary    ``<split>/images/*.jpg`` and v1.2 or v2.0 labels (``diga.data.mapillary``: versions,
             split names, its classes mapped to Cityscapes' by name)
folder       ``images/[<split>/]*``, ``labels/[<split>/]*.png`` (train ids, 8-bit; labels optional)

GTA5 and SYNTHIA have no official split: every image is a training image, unless
``<root>/<split>.txt`` lists the file names to use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diga.data import mapillary
from diga.data.classes import IGNORE_INDEX, ClassProtocol
from diga.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CITYSCAPES_LABEL_IDS = 34  # ids 0..33 exist in gtFine labelIds
SYNTHIA_CLASS_IDS = 23  # ids 0..22 exist in SYNTHIA-RAND-CITYSCAPES


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    name: str  # relative name, used for saved predictions


CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"


def sample_stem(sample_name: str) -> Path:
    """A sample's name without its image suffix, folders kept: what files made from it are
    named by (``aachen/aachen_000000_000019_leftImg8bit.png`` -> ``aachen/aachen_000000_000019``,
    ``00001.png`` -> ``00001``)."""
    name = Path(sample_name)
    return name.parent / name.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX).rsplit(".", 1)[0]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _split_filter(root: Path, split: str, names: list[Path]) -> list[Path]:
    listing = root / f"{split}.txt"
    if not listing.is_file():
        return names
    wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    return [p for p in names if p.name in wanted or p.stem in wanted]


def _require_dir(path: Path, kind: str, key: str) -> None:
    if not path.is_dir():
        raise UserError(f"{kind} layout: folder {path} not found ({key})",
                        f"point {key} at the dataset root that holds it")


def find_samples(kind: str, root: Path, split: str, key: str) -> list[Sample]:
    """Pairs of (image, label) in a real layout; ``label`` is None where none exists.

    Raises:
        UserError: ``root`` does not hold the layout; where its parent or a child folder does
            (a root given one level too deep or too shallow), the hint names that folder.
    """
    root = Path(root)
    try:
        return _find_samples(kind, root, split, key)
    except UserError as exc:
        near = [] if holds_layout(kind, root, split) else nearby_roots(kind, root, split)
        if not near:
            raise
        raise UserError(exc.message, f"did you mean {' or '.join(map(str, near))}? "
                        f"({kind} layout found there)") from None


def _any_image(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def holds_layout(kind: str, root: Path, split: str) -> bool:
    """Whether ``root`` holds ``kind``'s layout with an image of ``split`` in it. Cheap (stops at
    the first image), so that the folders around a wrong root can be tried."""
    try:
        if kind in ("gta5", "synthia"):
            return _any_image(root / ("images" if kind == "gta5" else "RGB"))
        if kind == "cityscapes":
            return next((root / "leftImg8bit" / split).glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}"),
                        None) is not None
        if kind == "bdd100k":
            return _any_image(root / "images/10k" / split) or _any_image(root / "seg/images" / split)
        if kind == "mapillary":
            return _any_image(mapillary.locate(root, split, "root").images)
        if kind == "folder":
            return _any_image(root / "images" / split) or _any_image(root / "images")
    except (UserError, OSError):
        pass
    return False


def nearby_roots(kind: str, root: Path, split: str, most: int = 3) -> list[Path]:
    """The folder one level up, else those one level down, that hold the layout ``root``
    lacks: the usual slip is a root one level off (``cityscapes/leftImg8bit`` for
    ``cityscapes``, or the folder of all datasets)."""
    parent = root.parent if root.parent not in (Path("."), root) else (
        Path(os.path.abspath(root)).parent)  # as the root was written, where that names one
    if parent != root and holds_layout(kind, parent, split):
        return [parent]
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:  # missing or unreadable: nothing below it
        return []
    return [c for c in children if holds_layout(kind, c, split)][:most]


def _find_samples(kind: str, root: Path, split: str, key: str) -> list[Sample]:
    _require_dir(root, kind, key)
    if kind in ("gta5", "synthia"):
        img_dir = root / ("images" if kind == "gta5" else "RGB")
        lbl_dir = root / ("labels" if kind == "gta5" else "GT/LABELS")
        _require_dir(img_dir, kind, key)
        images = _split_filter(root, split, _images_in(img_dir))
        return [Sample(p, lbl_dir / f"{p.stem}.png", p.name) for p in images]
    if kind == "cityscapes":
        img_dir = root / "leftImg8bit" / split
        _require_dir(img_dir, kind, key)
        out = []
        for p in sorted(img_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}")):
            stem = p.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX)
            label = root / "gtFine" / split / p.parent.name / f"{stem}_gtFine_labelIds.png"
            out.append(Sample(p, label if label.exists() else None, f"{p.parent.name}/{p.name}"))
        return out
    if kind == "bdd100k":
        img_dir, lbl_dir, suffix = root / "images/10k" / split, root / "labels/sem_seg/masks", ""
        if not img_dir.is_dir() and (root / "seg/images" / split).is_dir():  # older download
            img_dir, lbl_dir, suffix = root / "seg/images" / split, root / "seg/labels", "_train_id"
        return _paired(img_dir, lbl_dir / split, suffix, kind, key)
    if kind == "mapillary":
        where = mapillary.locate(root, split, key)
        return _paired(where.images, where.labels, "", kind, key)
    if kind == "folder":
        img_dir = root / "images" / split if (root / "images" / split).is_dir() else root / "images"
        lbl_dir = root / "labels" / split if (root / "labels" / split).is_dir() else root / "labels"
        return _paired(img_dir, lbl_dir, "", kind, key)
    raise ValueError(f"unknown dataset kind {kind!r}")


def _paired(img_dir: Path, lbl_dir: Path, suffix: str, kind: str, key: str) -> list[Sample]:
    """Images of a folder and their labels ``<lbl_dir>/<stem><suffix>.png`` (None if absent)."""
    _require_dir(img_dir, kind, key)
    out = []
    for p in _images_in(img_dir):
        label = lbl_dir / f"{p.stem}{suffix}.png"
        out.append(Sample(p, label if label.exists() else None, p.name))
    return out


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); grayscale and RGBA are converted."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image not found: {path}", "check the dataset folder") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot decode image {path} ({exc.__class__.__name__})",
                        "the file is corrupt; replace or remove it ('diga data check' lists all)") from None


def _read_raw_label(kind: str, path: Path) -> np.ndarray:
    if kind == "synthia":
        import png  # pypng: 16-bit RGB(A) that Pillow reduces to 8 bits

        try:
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            planes = info["planes"]
            data = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
        except FileNotFoundError:
            raise UserError(f"label not found: {path}", "every image needs a label file") from None
        except (png.Error, OSError, ValueError) as exc:
            raise UserError(f"cannot decode label {path} ({exc.__class__.__name__})",
                            "the file is corrupt; replace or remove it") from None
        return data.reshape(height, width, planes)[..., 0]  # class id: the first channel
    try:
        with Image.open(path) as im:
            if kind == "mapillary" and im.mode not in ("P", "L"):
                raise UserError(f"label {path} is in mode {im.mode}, not Mapillary's label indices",
                                "use the dataset's labels/ PNGs (palettised: a pixel is an "
                                "index into the config's labels), not a colour rendering")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"label not found: {path}", "every image needs a label file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot decode label {path} ({exc.__class__.__name__})",
                        "the file is corrupt; replace or remove it") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


class LabelDecoder:
    """Raw label file -> train ids of a class protocol, with a check for unknown ids."""

    def __init__(self, kind: str, protocol: ClassProtocol,
                 stored: ClassProtocol | None = None, root: Path | None = None,
                 split: str = "val", key: str = "data.root") -> None:
        """``stored``: for a folder layout, the protocol its train ids are in (default
        ``protocol``); labels are read in ``protocol``, which must be a subset of it.
        ``root``, ``split``: a Mapillary layout's, whose config names its classes."""
        self.kind = kind
        self.num_classes = protocol.num_classes
        self.what = f"{kind} label ids"
        self.allow_ignore = kind in ("folder", "bdd100k")  # train-id layouts: 255 is ignore
        self.hint: str | None = None
        if kind in ("gta5", "cityscapes"):
            self.lut = protocol.label_id_lut()
            self.known = CITYSCAPES_LABEL_IDS
        elif kind == "synthia":
            self.lut = protocol.synthia_lut()
            self.known = SYNTHIA_CLASS_IDS
        elif kind == "mapillary":
            where = mapillary.locate(Path(root or "."), split, key)
            names = mapillary.config_names(where.config)
            self.lut, self.known = mapillary.label_lut(names, protocol), len(names)
            self.what = f"mapillary {where.version} label ids"
            self.hint = f"labels must index the {len(names)} labels of {where.config.name}"
        elif kind == "bdd100k":  # 19-class train ids
            self.lut = np.full(256, IGNORE_INDEX, np.uint8)
            self.lut[:19] = protocol.train19_to_train[:19]
            self.known = 19
        else:  # folder: train ids of the stored protocol already
            stored = stored or protocol
            self.lut = np.full(256, IGNORE_INDEX, np.uint8)
            self.lut[: stored.num_classes] = protocol.train19_to_train[stored.train19]
            self.known = stored.num_classes

    def unknown_ids(self, raw: np.ndarray) -> list[int]:
        ids = np.unique(raw)
        bad = ids[(ids >= self.known) & ~(self.allow_ignore & (ids == IGNORE_INDEX))]
        return [int(v) for v in bad]

    def decode(self, path: Path) -> np.ndarray:
        raw = _read_raw_label(self.kind, path)
        bad = self.unknown_ids(raw)
        if bad:
            what = "train ids" if self.kind == "folder" else self.what
            hint = self.hint or (f"labels must use {what} below {self.known}"
                                                   + (" or 255" if self.allow_ignore else ""))
            raise UserError(f"label {path} holds unknown {what} {bad[:5]}", hint)
        return self.lut[raw]
