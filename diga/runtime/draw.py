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


def text_size(h: int, w: int) -> int:
    """Text height in pixels for a picture of (h, w): 2.5% of its shorter side, so that the
    legend reads alike on a 1080p frame and on a thumbnail, kept legible (8) and not huge (64)."""
    return int(np.clip(round(0.025 * min(h, w)), 8, 64))


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: its bitmap font
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
    draw, font = ImageDraw.Draw(image), _font(text_size(h, w))
    for text, y, anchor in ((f"1 {high}", 1, "rt"), (f"0 {low}", h - 1, "rb")):
        draw.text((w - bar_w - 2, y), text, fill=(255, 255, 255), font=font, anchor=anchor,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(image)


def draw_legend(image: np.ndarray, classes: list[tuple[str, tuple[int, int, int], float]],
                min_area: float = 0.01) -> np.ndarray:
    """``image`` (an overlay) with a legend in its top-left corner: a swatch, the name and the
    area of each class of ``classes`` (name, colour, area share; largest first) covering at
    least ``min_area``. The size is unchanged, so a video keeps its size.

    Text, swatches and margins scale with the picture (``text_size``), and the legend takes at
    most a third of its height (rows that do not fit are left out, the smallest), so that it
    neither shrinks to a few pixels on a large frame nor covers a small one."""
    h, w = image.shape[:2]
    shown = [c for c in classes if c[2] >= min_area]
    font = _font(text_size(h, w))
    text_h = font.getbbox("Ag")[3]  # ascent and descent, at the font's real size
    pad, gap = max(2, text_h // 4), max(1, text_h // 5)
    line = text_h + gap
    fit = (max(h // 3, line + 2 * pad) - 2 * pad + gap) // line  # at least one row where it fits
    rows = shown[: max(0, min(fit, (h - 2 * pad + gap) // line))]
    if not rows:
        return image
    labels = [f"{name} {area:.0%}" for name, _, area in rows]
    swatch = max(4, round(text_h * 0.8))
    text_x = pad + swatch + pad
    text_w = max(font.getbbox(text)[2] for text in labels)
    box_w, box_h = min(w, text_x + text_w + pad), 2 * pad + line * len(rows) - gap
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, 0, box_w - 1, box_h - 1), fill=(0, 0, 0, 150))
    for i, ((_, colour, _), text) in enumerate(zip(rows, labels, strict=True)):
        y = pad + i * line
        top = y + (text_h - swatch) // 2
        draw.rectangle((pad, top, pad + swatch - 1, top + swatch - 1), fill=(*colour, 255),
                       outline=(255, 255, 255, 255), width=max(1, swatch // 12))
        draw.text((text_x, y), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
