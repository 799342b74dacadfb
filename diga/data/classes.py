"""Class protocols: names, palettes and label-id -> train-id maps.

One table, the official Cityscapes definitions (``cityscapesscripts.helpers.labels`` is the
reference; ``tests/test_data.py`` proves they agree). The 16- and 13-class protocols are the
SYNTHIA -> Cityscapes ones: 16 drops terrain, truck and train; 13 also drops wall, fence, pole.
This module uses numpy only, so the torch-free runtime can share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255

# (Cityscapes label id, train id in the 19-class protocol, name, colour)
CITYSCAPES_CLASSES: tuple[tuple[int, int, str, tuple[int, int, int]], ...] = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)

# SYNTHIA-RAND-CITYSCAPES class id (first channel of GT/LABELS) -> 19-class train id.
SYNTHIA_TO_TRAIN19: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10,
    10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}  # fmt: skip

_DROPPED = {19: (), 16: (9, 14, 16), 13: (3, 4, 5, 9, 14, 16)}


@dataclass(frozen=True)
class ClassProtocol:
    """A class protocol: which of the 19 Cityscapes classes are evaluated, and in what order."""

    num_classes: int
    names: tuple[str, ...]
    palette: np.ndarray  # (C, 3) uint8
    train19_to_train: np.ndarray  # (256,) uint8: 19-class train id -> this protocol's id / 255
    train_to_label_id: np.ndarray  # (C,) uint8: this protocol's id -> Cityscapes label id
    train19: np.ndarray  # (C,) uint8: this protocol's id -> 19-class train id

    def label_id_lut(self) -> np.ndarray:
        """(256,) uint8 lookup: Cityscapes label id -> train id (255 for ignored ids)."""
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for label_id, train19, _, _ in CITYSCAPES_CLASSES:
            lut[label_id] = self.train19_to_train[train19]
        return lut

    def synthia_lut(self) -> np.ndarray:
        """(65536,) uint8 lookup: SYNTHIA class id -> train id (255 for ignored ids)."""
        lut = np.full(65536, IGNORE_INDEX, np.uint8)
        for synthia_id, train19 in SYNTHIA_TO_TRAIN19.items():
            lut[synthia_id] = self.train19_to_train[train19]
        return lut


def class_protocol(num_classes: int) -> ClassProtocol:
    """The 19-, 16- or 13-class protocol."""
    if num_classes not in _DROPPED:
        raise ValueError(f"unknown class protocol {num_classes}; use 19, 16 or 13")
    kept = [row for row in CITYSCAPES_CLASSES if row[1] not in _DROPPED[num_classes]]
    to_train = np.full(256, IGNORE_INDEX, np.uint8)
    for new_id, (_, train19, _, _) in enumerate(kept):
        to_train[train19] = new_id
    return ClassProtocol(
        num_classes=num_classes,
        names=tuple(row[2] for row in kept),
        palette=np.array([row[3] for row in kept], np.uint8),
        train19_to_train=to_train,
        train_to_label_id=np.array([row[0] for row in kept], np.uint8),
        train19=np.array([row[1] for row in kept], np.uint8),
    )


PROTOCOLS = tuple(sorted(_DROPPED, reverse=True))  # 19, 16, 13: each a subset of the one before


def protocol_named(names: tuple[str, ...] | list[str]) -> ClassProtocol | None:
    """The protocol whose classes are exactly ``names`` (in any order), or None."""
    for n in PROTOCOLS:
        if set(class_protocol(n).names) == set(names) and len(names) == n:
            return class_protocol(n)
    return None
