"""Pictures of a prediction for people: a class legend on the overlay, the uncertainty map
as a heat map with its colour bar. Pillow and numpy only, as the rest of the runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# matplotlib's "inferno" at five points: dark where the model is sure, bright where not; it
# reads in grayscale too
_HEAT_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9),
                          (252, 255, 164)], np.float64)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_HEAT_ANCHORS)),
                               _HEAT_ANCHORS[:, c]) for c in range(3)], 1).round().astype(np.uint8)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """A [0, 1] map as uint8 0..255 (what the uncertainty PNG stores)."""
    return (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def heatmap(values: np.ndarray) -> np.ndarray:
    """A [0, 1] map (H, W) -> RGB uint8 (H, W, 3) in the inferno colours."""
    return HEAT_LUT[to_uint8(values)]


def _font(height: int) -> Any:
    size = int(np.clip(height // 14, 8, 20))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: its bitmap font
        return ImageFont.load_default()


def with_colour_bar(heat: np.ndarray, low: str = "sure", high: str = "unsure") -> np.ndarray:
    """The heat map with a colour bar drawn over its right edge (same size): the gradient from
    0 (bottom) to 1 (top), labelled."""
    h, w = heat.shape[:2]
    bar_w = max(4, w // 40)
    out = heat.copy()
    gradient = HEAT_LUT[np.linspace(255, 0, h).round().astype(np.uint8)]  # (h, 3), top = 1
    out[:, w - bar_w:] = gradient[:, None, :]
    image = Image.fromarray(out)
    draw, font = ImageDraw.Draw(image), _font(h)
    for text, y, anchor in ((f"1 {high}", 1, "rt"), (f"0 {low}", h - 1, "rb")):
        draw.text((w - bar_w - 2, y), text, fill=(255, 255, 255), font=font, anchor=anchor,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(image)


def draw_legend(image: np.ndarray, classes: list[tuple[str, tuple[int, int, int], float]],
                min_area: float = 0.01) -> np.ndarray:
    """``image`` (an overlay) with a legend in its top-left corner: a swatch, the name and the
    area of each class of ``classes`` (name, colour, area share; largest first) covering at
    least ``min_area``, as many as fit. The size is unchanged, so a video keeps its size."""
    h, w = image.shape[:2]
    shown = [c for c in classes if c[2] >= min_area]
    if not shown:
        return image
    font = _font(h)
    line = max(font.getbbox("Ag")[3] + 2, 8)
    rows = shown[: max(0, (h - 4) // line)]
    if not rows:
        return image
    labels = [f"{name} {area:.0%}" for name, _, area in rows]
    text_w = max(font.getbbox(text)[2] for text in labels)
    box_w, box_h = min(w, line + 6 + text_w), 4 + line * len(rows)
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, 0, box_w, box_h), fill=(0, 0, 0, 150))
    for i, ((_, colour, _), text) in enumerate(zip(rows, labels, strict=True)):
        y = 2 + i * line
        draw.rectangle((3, y + 1, 3 + line - 4, y + line - 3), fill=(*colour, 255))
        draw.text((line + 3, y), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
