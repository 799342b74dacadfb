"""Mapillary Vistas: its versions' files, and its classes mapped to the 19 Cityscapes classes.

Layouts (the split names ``train`` / ``val`` / ``test`` stand for ``training`` /
``validation`` / ``testing``; the real names work too)::

    v1.2 download   <root>/config.json        <root>/<split>/labels/*.png
    v2.0 download   <root>/config_v1.2.json   <root>/<split>/v1.2/labels/*.png
                    <root>/config_v2.0.json   <root>/<split>/v2.0/labels/*.png
    both            <root>/<split>/images/*.jpg

Labels are 8-bit palettised PNGs whose pixel values index the config's ``labels`` list (v1.2:
66 labels, v2.0: 124, the last ``void--unlabeled`` in both). The version is the one whose
config file exists; where both do (the v2.0 download ships both), v1.2, the label set of the
paper's domain-generalisation table; a split suffix chooses: ``data.target.val_split=val@v2.0``
(or ``@v1.2``).

Classes are mapped to the 19 Cityscapes classes **by name** (the config's ``name`` field, never
by index), as the reference does for v1.2 (``fy-vision/DiGA``, ``MapillaryLoader``); every
other class is ignored (255). One table serves both versions (``TO_CITYSCAPES``): their names
differ. v1.2, and what v2.0 adds or renames:

- road: construction--flat--road, marking--general, object--manhole; v2.0: every lane marking
  (``marking--*``, ``marking-only--*``) but the crosswalks (``*--crosswalk-zebra``)
- sidewalk: construction--flat--sidewalk, construction--barrier--curb
- building: construction--structure--building; wall: construction--barrier--wall;
  fence: construction--barrier--fence
- pole: object--support--pole, object--support--utility-pole; v2.0 + object--support--pole-group
- traffic light: object--traffic-light; v2.0: object--traffic-light--{general-single,
  pedestrians, general-upright, general-horizontal, cyclists, other}
- traffic sign: object--traffic-sign--front; v2.0 + object--traffic-sign--{direction-front,
  temporary-front, information-parking}
- vegetation: nature--vegetation; terrain: nature--terrain; sky: nature--sky
- person: human--person; v2.0: human--person--individual, human--person--person-group
- rider: human--rider--bicyclist, human--rider--motorcyclist, human--rider--other-rider
- car: object--vehicle--car; v2.0 + object--vehicle--vehicle-group
- truck, bus, train, motorcycle, bicycle: object--vehicle--truck, --bus, --on-rails,
  --motorcycle, --bicycle

v2.0 split v1.2's classes: "Lane Marking - General" became some twenty marking classes (all
road, as the general marking is; the crosswalks stay ignored, as v1.2's
``marking--crosswalk-zebra`` is in the reference), "Traffic Light" six, the faces of traffic
signs four; its groups (person, pole, vehicle) count as their class, as Cityscapes'
``*group`` labels do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from diga.data.classes import IGNORE_INDEX, ClassProtocol, class_protocol
from diga.errors import UserError

SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "testing"}
VERSIONS = ("v1.2", "v2.0")

# Cityscapes class -> the Mapillary Vistas class names (v1.2 and v2.0) labelled as it; the first
# is the one the built-in benchmark's demo writes.
TO_CITYSCAPES: dict[str, tuple[str, ...]] = {
    "road": ("construction--flat--road", "marking--general", "object--manhole"),
    "sidewalk": ("construction--flat--sidewalk", "construction--barrier--curb"),
    "building": ("construction--structure--building",),
    "wall": ("construction--barrier--wall",),
    "fence": ("construction--barrier--fence",),
    "pole": ("object--support--pole", "object--support--utility-pole",
             "object--support--pole-group"),
    "traffic light": ("object--traffic-light", *(f"object--traffic-light--{k}" for k in (
        "general-single", "pedestrians", "general-upright", "general-horizontal", "cyclists",
        "other"))),
    "traffic sign": ("object--traffic-sign--front", "object--traffic-sign--direction-front",
                     "object--traffic-sign--temporary-front",
                     "object--traffic-sign--information-parking"),
    "vegetation": ("nature--vegetation",),
    "terrain": ("nature--terrain",),
    "sky": ("nature--sky",),
    "person": ("human--person", "human--person--individual", "human--person--person-group"),
    "rider": ("human--rider--bicyclist", "human--rider--motorcyclist",
              "human--rider--other-rider"),
    "car": ("object--vehicle--car", "object--vehicle--vehicle-group"),
    "truck": ("object--vehicle--truck",),
    "bus": ("object--vehicle--bus",),
    "train": ("object--vehicle--on-rails",),
    "motorcycle": ("object--vehicle--motorcycle",),
    "bicycle": ("object--vehicle--bicycle",),
}
UNLABELED = "void--unlabeled"


def train19_of(name: str) -> int:
    """The 19-class train id a Mapillary class ``name`` is labelled as, or 255."""
    for train19, cityscapes in enumerate(class_protocol(19).names):
        if name in TO_CITYSCAPES[cityscapes]:
            return train19
    if name.startswith(("marking--", "marking-only--")) and "crosswalk" not in name:
        return 0  # v2.0's lane markings: v1.2's marking--general, road
    return IGNORE_INDEX


def label_lut(names: list[str] | tuple[str, ...], protocol: ClassProtocol) -> np.ndarray:
    """(256,) uint8: label index (position in the config's ``labels``) -> protocol train id."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for index, name in enumerate(names[:256]):
        lut[index] = protocol.train19_to_train[train19_of(name)]
    return lut


@dataclass(frozen=True)
class MapillarySplit:
    """Where one split's files are, in the version chosen."""

    version: str
    images: Path
    labels: Path
    config: Path


def split_and_version(split: str) -> tuple[str, str | None]:
    """``"val@v2.0"`` -> ``("validation", "v2.0")``; ``"train"`` -> ``("training", None)``."""
    name, _, version = split.partition("@")
    return SPLIT_FOLDERS.get(name, name), version or None


def locate(root: Path, split: str, key: str) -> MapillarySplit:
    """A split's image and label folders and the config of the version chosen (see the module
    docstring); the folders may be missing (the caller reports that).

    Raises:
        UserError: no config file, or the version asked for is not there.
    """
    root = Path(root)
    folder, wanted = split_and_version(split)
    if wanted is not None and wanted not in VERSIONS:
        raise UserError(f"mapillary split '{split}' asks for version {wanted} ({key})",
                        "use @v1.2 or @v2.0 after the split name, e.g. val@v2.0")
    images, at = root / folder / "images", root / folder
    candidates = [MapillarySplit("v1.2", images, at / "labels", root / "config.json"),
                  MapillarySplit("v1.2", images, at / "v1.2/labels", root / "config_v1.2.json"),
                  MapillarySplit("v2.0", images, at / "v2.0/labels", root / "config_v2.0.json")]
    found = [c for c in candidates if c.config.is_file() and wanted in (None, c.version)]
    if not found:
        what = (f"the {wanted} config" if wanted
                else "config.json, config_v1.2.json or config_v2.0.json")
        raise UserError(f"mapillary layout: {what} not found in {root} ({key})",
                        f"point {key} at the Mapillary Vistas folder that holds it and "
                        "training/, validation/")
    return next((c for c in found if c.labels.is_dir()), found[0])


@lru_cache(maxsize=16)
def _read_names(config: Path, stamp: float) -> tuple[str, ...]:
    try:
        labels = json.loads(config.read_text())["labels"]
        return tuple(str(label["name"]) for label in labels)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the Mapillary config {config} ({exc.__class__.__name__})",
                        "it must be the dataset's JSON with a 'labels' list of {'name': ...}; "
                        "restore it from the download") from None


def config_names(config: Path) -> tuple[str, ...]:
    """The class names of a Mapillary config, in label-index order."""
    try:
        stamp = config.stat().st_mtime
    except OSError:
        raise UserError(f"Mapillary config not found: {config}",
                        "restore it from the download") from None
    return _read_names(config, stamp)


# The labels of Mapillary Vistas v1.2's config.json, in its order: (name, readable, colour,
# instances); each is evaluated but the last. ``diga data make-demo`` writes them.
V12_LABELS: tuple[tuple[str, str, tuple[int, int, int], bool], ...] = (
    ("animal--bird", "Bird", (165, 42, 42), True),
    ("animal--ground-animal", "Ground Animal", (0, 192, 0), True),
    ("construction--barrier--curb", "Curb", (196, 196, 196), False),
    ("construction--barrier--fence", "Fence", (190, 153, 153), False),
    ("construction--barrier--guard-rail", "Guard Rail", (180, 165, 180), False),
    ("construction--barrier--other-barrier", "Barrier", (90, 120, 150), False),
    ("construction--barrier--wall", "Wall", (102, 102, 156), False),
    ("construction--flat--bike-lane", "Bike Lane", (128, 64, 255), False),
    ("construction--flat--crosswalk-plain", "Crosswalk - Plain", (140, 140, 200), True),
    ("construction--flat--curb-cut", "Curb Cut", (170, 170, 170), False),
    ("construction--flat--parking", "Parking", (250, 170, 160), False),
    ("construction--flat--pedestrian-area", "Pedestrian Area", (96, 96, 96), False),
    ("construction--flat--rail-track", "Rail Track", (230, 150, 140), False),
    ("construction--flat--road", "Road", (128, 64, 128), False),
    ("construction--flat--service-lane", "Service Lane", (110, 110, 110), False),
    ("construction--flat--sidewalk", "Sidewalk", (244, 35, 232), False),
    ("construction--structure--bridge", "Bridge", (150, 100, 100), False),
    ("construction--structure--building", "Building", (70, 70, 70), False),
    ("construction--structure--tunnel", "Tunnel", (150, 120, 90), False),
    ("human--person", "Person", (220, 20, 60), True),
    ("human--rider--bicyclist", "Bicyclist", (255, 0, 0), True),
    ("human--rider--motorcyclist", "Motorcyclist", (255, 0, 100), True),
    ("human--rider--other-rider", "Other Rider", (255, 0, 200), True),
    ("marking--crosswalk-zebra", "Lane Marking - Crosswalk", (200, 128, 128), True),
    ("marking--general", "Lane Marking - General", (255, 255, 255), False),
    ("nature--mountain", "Mountain", (64, 170, 64), False),
    ("nature--sand", "Sand", (230, 160, 50), False),
    ("nature--sky", "Sky", (70, 130, 180), False),
    ("nature--snow", "Snow", (190, 255, 255), False),
    ("nature--terrain", "Terrain", (152, 251, 152), False),
    ("nature--vegetation", "Vegetation", (107, 142, 35), False),
    ("nature--water", "Water", (0, 170, 30), False),
    ("object--banner", "Banner", (255, 255, 128), True),
    ("object--bench", "Bench", (250, 0, 30), True),
    ("object--bike-rack", "Bike Rack", (100, 140, 180), True),
    ("object--billboard", "Billboard", (220, 220, 220), True),
    ("object--catch-basin", "Catch Basin", (220, 128, 128), True),
    ("object--cctv-camera", "CCTV Camera", (222, 40, 40), True),
    ("object--fire-hydrant", "Fire Hydrant", (100, 170, 30), True),
    ("object--junction-box", "Junction Box", (40, 40, 40), True),
    ("object--mailbox", "Mailbox", (33, 33, 33), True),
    ("object--manhole", "Manhole", (100, 128, 160), True),
    ("object--phone-booth", "Phone Booth", (142, 0, 0), True),
    ("object--pothole", "Pothole", (70, 100, 150), False),
    ("object--street-light", "Street Light", (210, 170, 100), True),
    ("object--support--pole", "Pole", (153, 153, 153), True),
    ("object--support--traffic-sign-frame", "Traffic Sign Frame", (128, 128, 128), True),
    ("object--support--utility-pole", "Utility Pole", (0, 0, 80), True),
    ("object--traffic-light", "Traffic Light", (250, 170, 30), True),
    ("object--traffic-sign--back", "Traffic Sign (Back)", (192, 192, 192), True),
    ("object--traffic-sign--front", "Traffic Sign (Front)", (220, 220, 0), True),
    ("object--trash-can", "Trash Can", (140, 140, 20), True),
    ("object--vehicle--bicycle", "Bicycle", (119, 11, 32), True),
    ("object--vehicle--boat", "Boat", (150, 0, 255), True),
    ("object--vehicle--bus", "Bus", (0, 60, 100), True),
    ("object--vehicle--car", "Car", (0, 0, 142), True),
    ("object--vehicle--caravan", "Caravan", (0, 0, 90), True),
    ("object--vehicle--motorcycle", "Motorcycle", (0, 0, 230), True),
    ("object--vehicle--on-rails", "On Rails", (0, 80, 100), False),
    ("object--vehicle--other-vehicle", "Other Vehicle", (128, 64, 64), True),
    ("object--vehicle--trailer", "Trailer", (0, 0, 110), True),
    ("object--vehicle--truck", "Truck", (0, 0, 70), True),
    ("object--vehicle--wheeled-slow", "Wheeled Slow", (0, 0, 192), True),
    ("void--car-mount", "Car Mount", (32, 32, 32), False),
    ("void--ego-vehicle", "Ego Vehicle", (120, 10, 10), False),
    ("void--unlabeled", "Unlabeled", (0, 0, 0), False),
)


def v12_config() -> dict:
    """A v1.2 ``config.json``'s content: its labels, in its order."""
    return {"labels": [{"name": n, "readable": r, "color": list(c), "instances": i,
                        "evaluate": n != UNLABELED} for n, r, c, i in V12_LABELS]}
