"""The images and labels of a split, as numpy arrays: no torch.

``SampleReader`` finds a split's files in its layout (or the built-in benchmark's scenes) and
reads image uint8 (H, W, 3) and train-id label (H, W) pairs at their own size. Training and
evaluation wrap it in a torch ``Dataset`` (``diga.data.datasets.SegDataset``); ``diga bench``
and ``diga eval`` of an exported file read through it directly, so that they run in a
runtime-only install.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from diga.data.classes import class_protocol
from diga.data.layouts import LabelDecoder, Sample, find_samples, read_image
from diga.errors import UserError


class SampleReader:
    """A split of one domain: files on disk or the built-in benchmark, same pairs either way."""

    def __init__(self, domain: Any, split: str, num_classes: int, builtin: Any = None,
                 key: str = "data", with_labels: bool = True,
                 stored_classes: int | None = None) -> None:
        self.kind = domain.kind
        self.split = split
        self.with_labels = with_labels
        self.protocol = class_protocol(num_classes)
        if domain.kind == "none":
            raise UserError(f"this needs {key.removeprefix('data.')} images and {key}.kind is none "
                            "(domain generalisation: no target images)",
                            f"set {key}.kind and {key}.root, or for diga eval name datasets "
                            "with --target KIND:ROOT")
        if domain.kind == "builtin":
            self.spec = builtin
            self.builtin_domain = domain.builtin_domain or (
                "source" if key.endswith("source") else "target")
            n = builtin.count(self.builtin_domain, split)
            self.samples = [Sample(Path(f"{self.builtin_domain}_{split}_{i:05d}.png"), None,
                                   f"{self.builtin_domain}_{split}_{i:05d}.png") for i in range(n)]
        else:
            self.samples = find_samples(domain.kind, domain.root, split, f"{key}.root")
            self.decoder = LabelDecoder(domain.kind, self.protocol,
                                        class_protocol(stored_classes or num_classes),
                                        root=domain.root, split=split, key=f"{key}.root")
        if not self.samples:
            raise UserError(f"{key}: split '{split}' of {domain.kind} at {domain.root} is empty",
                            f"check {key}.root and {key}.{'train' if split != 'val' else 'val'}_split")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_labels(self) -> bool:
        return self.kind == "builtin" or all(s.label is not None for s in self.samples)

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of a sample's image, from its header (the pixels are not decoded)."""
        if self.kind == "builtin":
            return tuple(self.spec.size)  # type: ignore[return-value]
        from PIL import Image

        path = self.samples[index].image
        try:
            with Image.open(path) as image:
                return image.height, image.width
        except FileNotFoundError:
            raise UserError(f"image not found: {path}", "check the dataset folder") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"cannot decode image {path} ({exc.__class__.__name__})",
                            "the file is corrupt; replace or remove it ('diga data check' "
                            "lists all)") from None

    def size_batches(self, indices: list[int], batch_size: int) -> list[list[int]]:
        """``indices`` in batches of at most ``batch_size`` images of one size: frames of
        several cameras in one folder batch by camera, in their order otherwise (one size:
        consecutive chunks, as a plain loader batches them)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(self.image_size(index), []).append(index)
        return [members[i:i + batch_size] for members in groups.values()
                for i in range(0, len(members), batch_size)]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image uint8 (H, W, 3) and train-id label (H, W) or None, before transforms."""
        if self.kind == "builtin":
            image, label19 = _builtin_scene(self.spec, self.builtin_domain, self.split, index)
            return image, self.protocol.train19_to_train[label19]
        sample = self.samples[index]
        image = read_image(sample.image)
        if sample.label is None or not self.with_labels:
            return image, None
        label = self.decoder.decode(sample.label)
        if label.shape != image.shape[:2]:
            raise UserError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"is {image.shape[1]}x{image.shape[0]} (WxH)",
                            "labels must have their image's size; 'diga data check' lists all")
        return image, label


@functools.lru_cache(maxsize=4096)
def _builtin_scene(spec: Any, domain: str, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated once per process: the stages of one process (the demo) share the scenes, and
    DataLoader workers forked after ``warm_builtin_cache`` inherit them."""
    from diga.data.builtin import generate_scene

    return generate_scene(spec, domain, split, index)  # callers never write into these arrays


def warm_builtin_cache(dataset: Any) -> None:
    """Generate every scene of a built-in split in this process, before workers fork."""
    base = getattr(dataset, "base", dataset)
    if getattr(base, "kind", None) == "builtin":
        for index in range(len(base)):
            _builtin_scene(base.spec, base.builtin_domain, base.split, index)


def builtin_spec(cfg: Any) -> Any:
    """The built-in benchmark a config describes (``data.builtin``)."""
    from diga.data.builtin import BuiltinSpec

    b = cfg.data.builtin
    return BuiltinSpec(seed=b.seed, size=tuple(b.size), source_train=b.source_train,
                       target_train=b.target_train, target_val=b.target_val)


def build_reader(cfg: Any, domain: str, split: str, classes: int | None = None) -> SampleReader:
    """The images and labels of a config's source or target ``split`` ("train" / "val") at their
    own size; ``classes``: the protocol to read labels in (default ``data.classes``)."""
    dom = cfg.data.source if domain == "source" else cfg.data.target
    split_name = dom.train_split if split == "train" else dom.val_split
    return SampleReader(dom, split_name if dom.kind != "builtin" else split,
                        classes or cfg.num_classes, builtin_spec(cfg), key=f"data.{domain}",
                        stored_classes=cfg.num_classes)
