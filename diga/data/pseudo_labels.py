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
from diga.data.layouts import sample_stem
from diga.errors import UserError

MANIFEST = "manifest.json"
# 2: labels at each target image's own (raw label) size, with the model's weights hash.
# Folders of diga 0.1 have no "format": labels at the training resize, no weights hash.
INPUTS_FORMAT = 2
# the config key behind each setting a pseudo-label folder or centroids file records
PROVENANCE_KEYS = {"inference_size": "data.target.resize", "scales": "pseudo.scales",
                   "weighting": "centroids.weighting"}


class StaleInputError(UserError):
    """Self-training inputs (pseudo-labels, centroids) made by another model, for another
    dataset or scale, or by an older diga: refused, or made again on request."""


def pseudo_label_path(folder: Path, sample_name: str) -> Path:
    """``aachen/aachen_000000_000019_leftImg8bit.png`` -> ``folder/aachen/aachen_000000_000019.png``."""
    stem = sample_stem(sample_name)
    return Path(folder) / stem.with_name(f"{stem.name}.png")


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


def inputs_provenance(cfg: Any, dataset: SegDataset, model: dict[str, Any]) -> dict[str, Any]:
    """What made a pseudo-label folder or a centroids file, and what it was made of.

    Args:
        cfg: the run's ``Config``; ``model``: ``Checkpoint.identity()`` of the model that makes
            (or must have made) them.
    """
    resize = cfg.data.target.resize
    return {"format": INPUTS_FORMAT, "model": model,
            "inference_size": f"{resize[0]}x{resize[1]}" if resize else None,
            "dataset": dataset_identity(dataset, cfg.data)}


def describe_model(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "an unrecorded model"
    return (f"{identity.get('folder')} ({identity.get('stage')} step {identity.get('step')}, "
            f"weights {str(identity.get('weights'))[:8]})")


def check_made_by(what: str, where: Path, found: dict[str, Any], expected: dict[str, Any],
                  keys: tuple[str, ...] = ()) -> None:
    """Refuse inputs an older diga made, or another model, dataset or scale made.

    Args:
        what: e.g. "pseudo-labels in runs/w/pseudo"; ``keys``: more top-level keys that must
            agree (the pseudo-label scales).

    Raises:
        StaleInputError: naming what differs; the hint is an action that fixes it.
    """
    hint = (f"add --regenerate to 'diga train selftrain' to make them again with "
            f"{expected['model']['folder']}, or delete {where}")
    if found.get("format") != INPUTS_FORMAT:
        raise StaleInputError(f"{what} were made by an older diga (they hold no weights hash; "
                              "pseudo-labels were stored at the training resize, now at each "
                              "image's own size)", hint)
    for key in ("kind", "root", "split", "images", "classes", "builtin"):
        got, want = found.get("dataset", {}).get(key), expected["dataset"].get(key)
        if got != want:
            raise StaleInputError(f"{what} were made for another dataset ({key}: {got!r}, this "
                                  f"run has {want!r})", hint)
    if found.get("model", {}).get("weights") != expected["model"]["weights"]:
        raise StaleInputError(f"{what} were made by {describe_model(found.get('model'))}, not by "
                              f"{describe_model(expected['model'])}, which this round starts from",
                              hint)
    for key in ("inference_size", *keys):
        if found.get(key) != expected.get(key):
            raise StaleInputError(f"{what} were made with {key} {found.get(key)!r}, this run "
                                  f"uses {expected.get(key)!r} ({PROVENANCE_KEYS[key]})", hint)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} holds no pseudo-labels ({MANIFEST} missing)",
                        "make them with 'diga pseudo RUN'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise StaleInputError(f"pseudo-label manifest {path} is corrupt",
                              f"delete {folder}; self-training makes the labels again") from None


def check_manifest(folder: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Refuse pseudo-labels made by another model, for another dataset, split, class protocol
    or scale, or by an older diga (``expected``: ``inputs_provenance`` plus ``scales``)."""
    manifest = read_manifest(folder)
    check_made_by(f"pseudo-labels in {folder}", Path(folder), manifest, expected, ("scales",))
    return manifest


def write_pseudo_label(path: Path, label: np.ndarray) -> None:
    from diga.io import atomic_write

    atomic_write(path, lambda p: Image.fromarray(label.astype(np.uint8)).save(p, format="PNG"))


class PseudoLabelDataset(Dataset):
    """Target training images with their pseudo-labels (and true labels where known).

    Pseudo-labels are stored at each image's own size, so they do not depend on the training
    resize: the joint transform resizes them with the image (nearest), as it does true labels.
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
            raise UserError(f"pseudo-label {path} is missing (the folder was changed after "
                            "it was written)", f"delete {self.folder}; self-training makes the "
                            "labels again") from None
        if pseudo.shape != image_np.shape[:2]:
            raise UserError(f"pseudo-label {path} is {pseudo.shape[1]}x{pseudo.shape[0]}, its "
                            f"image {image_np.shape[1]}x{image_np.shape[0]} (WxH): the image "
                            "was replaced after the labels were made",
                            f"delete {self.folder}; self-training makes the labels again")
        true = label_np if label_np is not None else np.full_like(pseudo, IGNORE_INDEX)
        image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1)
        labels = torch.from_numpy(np.stack([pseudo, true]).astype(np.uint8))
        image, labels = self.base.transform(image, labels, seed)
        return {"image": image, "label": labels, "index": index}
