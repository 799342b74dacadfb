"""Visual grids: one row per image, one column per view (image, mixed view, prediction, label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diga.data.classes import IGNORE_INDEX
from diga.io import atomic_write


def _to_rgb(x: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """Image (3, H, W) in [0, 1] or uint8, or label map (H, W) -> uint8 (H, W, 3)."""
    if x.ndim == 2:
        lab = x.cpu().numpy().astype(np.int64)
        colours = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        lab = np.where(lab == IGNORE_INDEX, len(palette), lab).clip(0, 255)
        return colours[lab]
    x = x.detach().float().cpu()
    if x.max() > 1.5:
        x = x / 255.0
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_grid(path: Path, columns: dict[str, torch.Tensor], palette: np.ndarray,
              rows: int = 4) -> np.ndarray:
    """``columns``: name -> batch of images (B, 3, H, W) or label maps (B, H, W), same H, W.
    Writes the grid as a PNG and returns it, (H, W, 3) uint8."""
    names = list(columns)
    n = min(rows, *(len(v) for v in columns.values()))
    tiles = [[_to_rgb(columns[name][i], palette) for name in names] for i in range(n)]
    h, w = tiles[0][0].shape[:2]
    header = 14
    canvas = np.full((header + n * h, len(names) * w, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas[header + r * h : header + (r + 1) * h, c * w : (c + 1) * w] = tile
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for c, name in enumerate(names):
        draw.text((c * w + 3, 1), name, fill=(0, 0, 0))
    atomic_write(path, lambda p: image.save(p, format="PNG"))
    return np.asarray(image)
