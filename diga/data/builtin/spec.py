"""What the built-in benchmark holds: its domains, splits, seed and image size."""

from __future__ import annotations

from dataclasses import dataclass

DOMAINS = ("source", "target")
SPLITS = {"source": ("train",), "target": ("train", "val")}


@dataclass(frozen=True)
class BuiltinSpec:
    """What the built-in benchmark holds: its seed, image size (H, W) and split sizes."""

    seed: int = 0
    size: tuple[int, int] = (128, 256)  # (H, W)
    source_train: int = 400
    target_train: int = 400
    target_val: int = 100

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"builtin size must be (H, W) with both >= 16, got {self.size}")
        object.__setattr__(self, "size", size)
        for name in ("source_train", "target_train", "target_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"builtin {name} must be >= 0, got {getattr(self, name)}")

    def count(self, domain: str, split: str) -> int:
        """Number of images in ``domain``/``split``; ValueError when there is no such split."""
        if domain not in SPLITS or split not in SPLITS[domain]:
            known = ", ".join(f"{d}/{s}" for d in DOMAINS for s in SPLITS[d])
            raise ValueError(f"unknown builtin split {domain}/{split}; known: {known}")
        return getattr(self, f"{domain}_{split}")
