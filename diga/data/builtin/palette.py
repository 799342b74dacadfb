"""Class ids, colours and the appearance tables of the two domains (target tone, textures)."""

from __future__ import annotations

import numpy as np

# 19-class train ids, in CITYSCAPES_CLASSES order.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip

# Target tone per class: (hue shift in degrees, saturation factor, value factor, tint, tint
# weight). One shift for the whole domain, like a different camera response and a different
# world (dry vegetation, darker asphalt, overcast sky).
_TARGET_TONE: dict[int, tuple[float, float, float, tuple[int, int, int], float]] = {
    ROAD: (0, 1.0, 0.85, (125, 102, 72), 0.45),
    SIDEWALK: (-60, 0.45, 0.85, (140, 150, 160), 0.35),
    BUILDING: (35, 0.7, 0.8, (150, 135, 115), 0.2),
    WALL: (60, 1.1, 0.8, (110, 120, 95), 0.3),
    FENCE: (70, 1.3, 1.0, (120, 140, 120), 0.3),
    POLE: (0, 1.0, 1.25, (150, 140, 110), 0.4),
    LIGHT: (0, 1.0, 1.0, (120, 110, 40), 0.6),
    SIGN: (12, 0.8, 0.85, (200, 200, 190), 0.15),
    VEGETATION: (-25, 0.7, 0.75, (95, 90, 40), 0.25),
    TERRAIN: (-35, 0.6, 1.0, (175, 150, 100), 0.35),
    SKY: (-8, 0.55, 1.0, (200, 205, 205), 0.35),
    PERSON: (25, 0.7, 0.8, (60, 60, 60), 0.1),
    RIDER: (25, 0.7, 0.8, (60, 60, 60), 0.1),
    CAR: (15, 0.7, 0.85, (90, 90, 90), 0.1),
    TRUCK: (40, 0.8, 0.9, (90, 90, 90), 0.1),
    BUS: (140, 1.0, 0.9, (90, 90, 90), 0.1),
    TRAIN: (160, 1.0, 0.9, (90, 90, 90), 0.1),
    MOTORCYCLE: (30, 0.8, 0.85, (60, 60, 60), 0.1),
    BICYCLE: (40, 0.8, 0.9, (60, 60, 60), 0.1),
}


def _tone_tables() -> tuple[np.ndarray, ...]:
    """(256,)-row lookups of _TARGET_TONE; identity for labels without a tone (ignore)."""
    dh, sf, vf, tw = (
        np.zeros(256, np.float32),
        *np.ones((2, 256), np.float32),
        np.zeros(256, np.float32),
    )
    tint = np.zeros((256, 3), np.float32)
    for cls, (h, s, v, t, w) in _TARGET_TONE.items():
        dh[cls], sf[cls], vf[cls], tint[cls], tw[cls] = h / 360.0, s, v, t, w
    return dh, sf, vf, tint, tw


_TONE = _tone_tables()


def _tone(rgb: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Apply the target's per-class hue / saturation / value shift and tint to (M, 3) colours."""
    dh, sf, vf, tint, tw = (t[classes] for t in _TONE)
    c = np.clip(rgb / 255.0, 0, 1)
    val, low = c.max(1), c.min(1)
    chroma = val - low
    sat = np.where(val > 0, chroma / np.maximum(val, 1e-6), 0.0)
    r, g, b = (c.T - low) / np.maximum(chroma, 1e-6)  # position of each channel in the hexcone
    hue = np.where(c[:, 0] == val, (g - b) / 6.0, np.where(c[:, 1] == val, (2 + b - r) / 6.0,
                                                          (4 + r - g) / 6.0))  # fmt: skip
    hue = (hue + dh) % 1.0
    sat, val = np.minimum(sat * sf, 1.0), np.minimum(val * vf, 1.0)
    k = (np.array([5.0, 3.0, 1.0])[:, None] + hue * 6.0) % 6.0  # (3, M) standard hsv -> rgb
    out = val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0, 1)
    out = (1 - tw)[:, None] * out.T * 255.0 + tw[:, None] * tint
    return np.clip(out, 0, 255).astype(np.float32)


def _table(values: dict[int, float], default: float = 0.0) -> np.ndarray:
    """(256,) float32 per-label lookup, so a texture amplitude is one gather per pixel."""
    out = np.full(256, default, np.float32)
    for cls, value in values.items():
        out[cls] = value
    return out


# Texture amplitudes (relative to albedo) per class.
_SOURCE_SMOOTH = _table({ROAD: 0.04, SIDEWALK: 0.04, BUILDING: 0.03, VEGETATION: 0.08,
                         TERRAIN: 0.06, WALL: 0.03}, 0.015)  # fmt: skip
_TARGET_SMOOTH = _table({ROAD: 0.1, SIDEWALK: 0.08, BUILDING: 0.1, VEGETATION: 0.2,
                         TERRAIN: 0.18, WALL: 0.12, SKY: 0.12}, 0.05)  # fmt: skip
_TARGET_FINE = _table({ROAD: 0.13, SIDEWALK: 0.1, BUILDING: 0.08, WALL: 0.12, VEGETATION: 0.25,
                       TERRAIN: 0.22, FENCE: 0.08, SKY: 0.015}, 0.05)  # fmt: skip
# Oriented stripes in the target (brick courses, planks, paving): amplitude, period in
# pixels at 128 rows, angle in degrees.
_STRIPE_AMP = _table({BUILDING: 0.1, WALL: 0.14, SIDEWALK: 0.08, FENCE: 0.15, ROAD: 0.04})
_STRIPE_FREQ = (
    2 * np.pi / _table({BUILDING: 2.5, WALL: 3.0, SIDEWALK: 4.0, FENCE: 2.2, ROAD: 6.0}, 4.0)
)
_STRIPE_COS = np.cos(np.deg2rad(_table({BUILDING: 90, WALL: 90, SIDEWALK: 30, FENCE: 0, ROAD: 80})))
_STRIPE_SIN = np.sin(np.deg2rad(_table({BUILDING: 90, WALL: 90, SIDEWALK: 30, FENCE: 0, ROAD: 80})))


# Colours of the scene grammar (source look; the target's are toned by class).
_CAR_COLOURS = ((170, 30, 30), (30, 60, 150), (225, 225, 225), (150, 150, 155), (35, 35, 40),
                (40, 90, 60), (200, 170, 40), (110, 40, 80), (90, 110, 130))  # fmt: skip
_FACADE_COLOURS = ((200, 180, 150), (160, 85, 65), (135, 135, 140), (220, 210, 185),
                   (110, 120, 140), (185, 150, 115), (170, 175, 160))  # fmt: skip
_CLOTHES = ((40, 40, 60), (150, 30, 30), (30, 80, 140), (200, 200, 190), (90, 70, 50),
            (60, 110, 60), (210, 150, 40), (120, 120, 125))  # fmt: skip
_SKIN = ((230, 190, 160), (190, 140, 100), (120, 80, 55))
_HAZE = (185, 210, 235)
_SKIES = (((95, 150, 220), _HAZE), ((95, 150, 220), _HAZE), ((140, 175, 215), (205, 215, 230)),
          ((165, 180, 200), (210, 215, 222)))  # fmt: skip
_ASPHALT = ((88, 86, 94), (100, 99, 104), (78, 78, 84))
_GROUND = (ROAD, SIDEWALK, TERRAIN)
_IS_GROUND = np.isin(np.arange(256), _GROUND)
_KINDS = ("gap", "building", "vegetation", "wall", "fence")
_HEIGHTS = {"gap": (0.0, 0.0), "building": (4.0, 16.0), "vegetation": (2.5, 5.5), "wall": (1.3, 2.4),
            "fence": (1.0, 1.6)}  # fmt: skip
