"""Pseudo-label files: 8-bit train-id PNGs named after the target images, plus a manifest.

The manifest names the model and config that made them and the dataset they belong to, so a
directory made for another dataset or class protocol is refused instead of silently used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diga.data.classes import IGNORE_INDEX
from diga.data.datasets import SegDataset
from diga.errors import UserError

MANIFEST = "manifest.json"


def pseudo_label_path(folder: Path, sample_name: str) -> Path:
    """``aachen/aachen_000000_000019_leftImg8bit.png`` -> ``folder/aachen/aachen_000000_000019.png``."""
    name = Path(sample_name)
    stem = name.name.removesuffix("_leftImg8bit.png").rsplit(".", 1)[0]
    return Path(folder) / name.parent / f"{stem}.png"


def dataset_identity(dataset: SegDataset, cfg_data: Any) -> dict[str, Any]:
    """What a pseudo-label directory must match: dataset kind, root, split, size, classes."""
    dom = cfg_data.target
    return {
        "kind": dom.kind,
        "root": str(dom.root) if dom.root else None,
        "split": dataset.split,
        "images": len(dataset),
        "classes": cfg_data.classes,
        "builtin": cfg_data.builtin.model_dump(mode="json") if dom.kind == "builtin" else None,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} holds no pseudo-labels ({MANIFEST} missing)",
                        "make them with 'diga pseudo RUN'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"pseudo-label manifest {path} is corrupt",
                        "delete the folder and run 'diga pseudo RUN' again") from None


def check_manifest(folder: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Refuse pseudo-labels made for another dataset, split or class protocol."""
    manifest = read_manifest(folder)
    found = manifest.get("dataset", {})
    for key in ("kind", "root", "split", "images", "classes", "builtin"):
        if found.get(key) != expected.get(key):
            raise UserError(
                f"pseudo-labels in {folder} were made for another dataset "
                f"({key}: {found.get(key)!r}, this run has {expected.get(key)!r})",
                "delete that folder or run 'diga pseudo' for this config",
            )
    return manifest


def write_pseudo_label(path: Path, label: np.ndarray) -> None:
    from diga.io import atomic_write

    atomic_write(path, lambda p: Image.fromarray(label.astype(np.uint8)).save(p, format="PNG"))


class PseudoLabelDataset(Dataset):
    """Target training images with their pseudo-labels (and true labels where known).

    Items: ``image`` uint8 (3, H, W); ``label`` uint8 (2, H, W): [pseudo-label, true label or
    255]; both labels go through the same joint transform as the image.
    """

    def __init__(self, base: SegDataset, folder: Path) -> None:
        self.base = base
        self.folder = Path(folder)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image_np, label_np = self.base.load(index)
        path = pseudo_label_path(self.folder, self.base.samples[index].name)
        try:
            with Image.open(path) as im:
                pseudo = np.asarray(im)
        except FileNotFoundError:
            raise UserError(f"pseudo-label {path} is missing",
                            "delete the pseudo folder and run 'diga pseudo' again") from None
        if pseudo.shape != image_np.shape[:2]:
            raise UserError(f"pseudo-label {path} does not match its image size",
                            "delete the pseudo folder and run 'diga pseudo' again")
        true = label_np if label_np is not None else np.full_like(pseudo, IGNORE_INDEX)
        image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1)
        labels = torch.from_numpy(np.stack([pseudo, true]).astype(np.uint8))
        image, labels = self.base.transform(image, labels, seed)
        return {"image": image, "label": labels, "index": index}
