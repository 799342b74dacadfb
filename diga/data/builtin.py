"""The built-in benchmark: procedural street scenes in two domains.

Both domains share one scene grammar (a street in perspective: road, sidewalks, facades with
windows, trees, poles with lights and signs, vehicles, people) and the 19 Cityscapes classes,
so their class statistics agree. They differ in appearance, the way a game differs from a car
camera: ``source`` is a clean render (flat colours, faint texture, constant light, no noise);
``target`` shifts each class's hue / saturation / value systematically, adds fine surface
textures, uneven light (brightness, contrast, colour cast, vignette, a light gradient, cast
shadows) and camera blur and noise. Shapes and context stay the same, so the gap can be closed.

Every image comes from its own generator, ``np.random.default_rng([seed, domain, split,
index])``, so any image can be made lazily, in any order, in any DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from diga.data.classes import IGNORE_INDEX, class_protocol
from diga.errors import UserError

DOMAINS = ("source", "target")
SPLITS = {"source": ("train",), "target": ("train", "val")}

# 19-class train ids, in CITYSCAPES_CLASSES order.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip


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


# ----------------------------------------------------------------------------- appearance

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


# ----------------------------------------------------------------------------- canvas


@lru_cache(maxsize=8)
def _centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: ys (H, 1) and xs (1, W), float32, shared and read-only."""
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


@lru_cache(maxsize=32)
def _interp(n: int, cells: int) -> np.ndarray:
    """(n, cells + 1) float32 linear-interpolation weights from a coarse grid to n samples."""
    pos = np.linspace(0, cells, n, dtype=np.float32)
    lo = np.minimum(pos.astype(int), cells - 1)
    out = np.zeros((n, cells + 1), np.float32)
    out[np.arange(n), lo] = 1 - (pos - lo)
    out[np.arange(n), lo + 1] = pos - lo
    out.flags.writeable = False
    return out


class _Canvas:
    """Shapes painted back to front into a map of materials (a class and a colour each).

    Painting writes one uint16 per pixel; labels and colours are looked up once at the end.
    Each shape is evaluated only inside its clipped bounding box, on pixel centres.
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.ys, self.xs = _centres(h, w)
        self.mat = np.zeros((h, w), np.uint16)  # material 0: the sky
        self.classes: list[int] = [SKY]
        self.colours: list[np.ndarray] = [np.zeros(3, np.float32)]

    def material(self, cls: int, colour) -> int:
        self.classes.append(cls)
        self.colours.append(colour)
        return len(self.classes) - 1

    def box(self, x0: float, y0: float, x1: float, y1: float):
        """(region, ys, xs) of the pixels in a rectangle, or None when it is off the image."""
        i0, i1 = max(int(y0), 0), min(int(y1) + 1, self.h)
        j0, j1 = max(int(x0), 0), min(int(x1) + 1, self.w)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.ys[i0:i1], self.xs[:, j0:j1]

    def paint(self, region, mask: np.ndarray, cls: int, colour) -> None:
        self.mat[region][mask] = self.material(cls, colour)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int, colour) -> None:
        if x1 - x0 < 1.0:  # thin things (poles, far people) keep one pixel of width
            c = 0.5 * (x0 + x1)
            x0, x1 = c - 0.5, c + 0.5
        i0, i1 = max(int(np.ceil(y0 - 0.5)), 0), min(int(np.ceil(y1 - 0.5)), self.h)
        j0, j1 = max(int(np.ceil(x0 - 0.5)), 0), min(int(np.ceil(x1 - 0.5)), self.w)
        if i0 < i1 and j0 < j1:
            self.mat[i0:i1, j0:j1] = self.material(cls, colour)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int, colour) -> None:
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        b = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if b is not None:
            region, ys, xs = b
            self.paint(region, ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0, cls, colour)

    def ring(self, cx: float, cy: float, r: float, width: float, cls: int, colour) -> None:
        b = self.box(cx - r, cy - r, cx + r, cy + r)
        if b is not None:
            region, ys, xs = b
            d2 = (xs - cx) ** 2 + (ys - cy) ** 2
            inner = max(r - max(width, 0.8), 0.0)
            self.paint(region, (d2 <= r * r) & (d2 >= inner * inner), cls, colour)

    def segment(self, xa, ya, xb, yb, radius: float, cls: int, colour) -> None:
        """A capsule: all pixels within ``radius`` of a segment (limbs, frames, arms)."""
        r = max(radius, 0.5)
        b = self.box(min(xa, xb) - r, min(ya, yb) - r, max(xa, xb) + r, max(ya, yb) + r)
        if b is not None:
            region, ys, xs = b
            dx, dy = xb - xa, yb - ya
            t = np.clip(
                ((xs - xa) * dx + (ys - ya) * dy) * (1.0 / max(dx * dx + dy * dy, 1e-6)), 0, 1
            )
            self.paint(
                region, (xs - xa - t * dx) ** 2 + (ys - ya - t * dy) ** 2 <= r * r, cls, colour
            )

    def polygon(self, points: list[tuple[float, float]], cls: int, colour) -> None:
        """A convex polygon, points in either winding order."""
        px, py = [p[0] for p in points], [p[1] for p in points]
        b = self.box(min(px), min(py), max(px), max(py))
        if b is None:
            return
        region, ys, xs = b
        n = len(points)
        area = sum(px[k] * py[(k + 1) % n] - px[(k + 1) % n] * py[k] for k in range(n))
        sign = 1.0 if area >= 0 else -1.0
        mask = None
        for k in range(n):
            ex, ey = sign * (px[(k + 1) % n] - px[k]), sign * (py[(k + 1) % n] - py[k])
            inside = ex * (ys - py[k]) >= ey * (xs - px[k])
            mask = inside if mask is None else mask & inside
        self.paint(region, mask, cls, colour)


# ----------------------------------------------------------------------------- scene

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


class _Scene:
    """One street in perspective, painted into a canvas back to front.

    World units are camera heights: the camera sits 1 above the road at X = 0 looking along
    +Z; a point (X, Y, Z) lands on pixel (uv + f X / Z, vh + f (1 - Y) / Z) with f = H.
    """

    def __init__(self, h: int, w: int, target: bool, rng: np.random.Generator) -> None:
        self.h, self.w, self.f, self.target, self.rng = h, w, float(h), target, rng
        self.cv = _Canvas(h, w)
        self.shadow = np.ones((h, w), np.float32) if target else None  # contact shadows
        self._jitter, self._next = rng.standard_normal(1024).tolist(), 0
        # The target camera is pitched up a little: its horizon sits slightly higher.
        self.vh = h * (rng.uniform(0.35, 0.44) if target else rng.uniform(0.38, 0.47))
        self.uv = w * rng.uniform(0.4, 0.6)
        # Distances from the camera's line to the left / right of: the road edge, a grass verge,
        # the outer sidewalk edge, the facades and a second row of houses behind them.
        road = rng.uniform(1.6, 3.8, 2)
        verge = np.where(rng.random(2) < 0.3, rng.uniform(0.4, 0.9, 2), 0.0)
        walk = road + verge + rng.uniform(0.8, 2.0, 2)
        front = walk + np.where(rng.random(2) < 0.5, rng.uniform(0.2, 1.5, 2), 0.0)
        back = front + rng.uniform(4.0, 12.0, 2)
        self.road, self.verge, self.walk = road.tolist(), verge.tolist(), walk.tolist()
        self.front, self.back = front.tolist(), back.tolist()
        self.z_end = rng.uniform(30.0, 120.0)
        self.cross = None
        if rng.random() < 0.4:  # a cross street
            z0 = rng.uniform(6.0, 25.0)
            self.cross = (z0, z0 + rng.uniform(5.0, 9.0))
        self.blocks = [self._blocks(front=True) for _ in range(2)]

    # -- helpers
    def x(self, X: float, Z: float) -> float:
        return self.uv + self.f * X / Z

    def y(self, Y: float, Z: float) -> float:
        return self.vh + self.f * (1.0 - Y) / Z

    def pick(self, options):
        return options[int(self.rng.random() * len(options))]

    def colour(self, cls: int, rgb, jitter: float = 10.0) -> np.ndarray:
        """A colour near ``rgb`` in the source look (``render`` tones the target's by class)."""
        k, noise = self._next, self._jitter
        self._next = (k + 3) % 1020
        return np.array([min(max(v + jitter * noise[k + i], 0.0), 255.0) for i, v in enumerate(rgb)],
                        np.float32)  # fmt: skip

    def _blocks(self, front: bool) -> list[tuple[float, float, str, float]]:
        """Facade blocks along one side of the street: (z0, z1, kind, height)."""
        rng, out = self.rng, []
        if front:
            z, kinds = (
                rng.uniform(0.3, 3.0),
                ("building",) * 4 + ("vegetation", "wall", "fence", "gap"),
            )
        else:  # a second, taller row of houses behind, with gaps of sky
            z, kinds = rng.uniform(3.0, 8.0), ("building",) * 7 + ("vegetation",) * 2 + ("gap",)
        while z < self.z_end:
            if front and self.cross is not None and self.cross[0] - 0.5 < z < self.cross[1]:
                z = self.cross[1]
                continue
            z1 = min(z + rng.uniform(6.0, 25.0), self.z_end)
            if front and self.cross is not None and z < self.cross[0] < z1:
                z1 = self.cross[0]
            kind = self.pick(kinds)
            lo, hi = _HEIGHTS[kind] if kind != "building" or front else (6.0, 22.0)
            height = rng.uniform(lo, hi)
            out.append((z, z1, kind, height))
            z = z1
        return out

    # -- environment
    def ground(self) -> None:
        """Road, sidewalks, verges, crossings and the ground in front of each facade block."""
        i0 = int(np.floor(self.vh)) + 1
        if i0 >= self.h:
            return
        cv, rng = self.cv, self.rng
        dy = cv.ys[i0:] - self.vh  # (h', 1)
        X = (cv.xs - self.uv) / dy  # (h', W) lateral position of each ground pixel
        Z = self.f / dy  # (h', 1) its depth
        right = X >= 0
        ax = np.abs(X)
        road_e = np.where(right, self.road[1], self.road[0])
        verge_e = road_e + np.where(right, self.verge[1], self.verge[0])
        walk_e = np.where(right, self.walk[1], self.walk[0])
        label = np.full(X.shape, SIDEWALK, np.uint8)
        for side in (0, 1):  # beyond the sidewalk: the ground of the block at that depth
            blocks = self.blocks[side]
            if not blocks:
                continue
            edges = np.array([b[0] for b in blocks] + [blocks[-1][1]], np.float32)
            cls = np.array([SIDEWALK if b[2] in ("building", "wall") else
                            (TERRAIN if b[2] == "vegetation" or rng.random() < 0.6 else SIDEWALK)
                            for b in blocks] + [SIDEWALK, SIDEWALK], np.uint8)  # fmt: skip
            k = np.searchsorted(edges, Z[:, 0], side="right") - 1  # (h',) -1 before, n after
            row_cls = cls[np.where(k < 0, len(blocks), k)][:, None]
            sel = (right if side else ~right) & (ax >= walk_e)
            label[sel] = np.broadcast_to(row_cls, X.shape)[sel]
        label[(ax >= road_e) & (ax < verge_e)] = TERRAIN
        label[ax < road_e] = ROAD
        centre = 0.5 * (self.road[1] - self.road[0]) + rng.uniform(-0.3, 0.3)
        dash = rng.uniform(2.0, 6.0)
        marks = (np.abs(X - centre) < 0.05) & ((Z % (2 * dash)) < dash)
        if rng.random() < 0.5:
            marks |= np.abs(ax - road_e + 0.2) < 0.04
        if self.cross is not None:
            zc0, zc1 = self.cross
            in_cross = ((Z >= zc0) & (Z < zc1)) & (ax >= road_e)
            label[in_cross] = SIDEWALK
            label[in_cross & ((Z >= zc0 + 1.2) & (Z < zc1 - 1.2))] = ROAD
            zebra = (Z > zc0 - 2.2) & (Z < zc0 - 0.4)
            marks |= zebra & (ax < road_e) & ((X % 0.9) < 0.45)
        tiles = ((ax % 0.8) < 0.06) | ((Z % 0.8) < 0.06 * Z / 4 + 0.02)
        lut = np.zeros(256, np.uint16)
        walk = self.colour(SIDEWALK, (170, 150, 145), 12)
        lut[ROAD] = cv.material(ROAD, self.colour(ROAD, self.pick(_ASPHALT), 8))
        lut[SIDEWALK] = cv.material(SIDEWALK, walk)
        lut[TERRAIN] = cv.material(
            TERRAIN,
            self.colour(TERRAIN, self.pick(((140, 165, 80), (125, 150, 70), (150, 135, 95))), 8),
        )
        mat = lut[label]
        mat[marks & (label == ROAD)] = cv.material(ROAD, self.colour(ROAD, (225, 225, 215), 5))
        mat[tiles & (label == SIDEWALK)] = cv.material(SIDEWALK, walk * 0.85)
        cv.mat[i0:] = mat

    def facade_plane(self, side: int, xf: float, blocks, far: bool) -> None:
        """All blocks of one facade plane parallel to the street (X = +-xf), in one pass:
        buildings with windows, hedges, walls, fences, or gaps."""
        if not blocks:
            return
        cv, rng, f = self.cv, self.rng, self.f
        sign = 1 if side else -1
        n = len(blocks)
        z0 = np.array([b[0] for b in blocks], np.float32)
        z1 = np.array([b[1] for b in blocks], np.float32)
        kind = np.array([_KINDS.index(b[2]) for b in blocks])
        height = np.array([b[3] for b in blocks], np.float32)
        xa, xb = sorted((self.x(sign * xf, z0[0]), self.x(sign * xf, z1[-1])))
        top = min(self.y(hb + 0.8, zb) for zb, _, _, hb in blocks)
        b = cv.box(xa, top, xb, self.y(0.0, z0[0]))
        if b is None:
            return
        region, ys, xs = b
        Z = f * xf / np.maximum(np.abs(xs - self.uv), 1e-3)  # (1, w') depth of each column
        k = np.clip(np.searchsorted(z0, Z, side="right") - 1, 0, n - 1)  # (1, w') block
        kk = kind[k]
        phase = rng.uniform(0, 6.3)
        bumps = 0.5 * np.sin(Z * 1.2 + phase) + 0.3 * np.sin(Z * 3.1 + phase)
        col_top = height[k] + np.where(kk == 2, bumps, 0.0)  # (1, w')
        Y = 1.0 - (ys - self.vh) * (Z / f)  # (h', w') height on the facade
        mask = (Y >= 0) & (Y < col_top) & ((Z >= z0[k]) & (Z < z1[k]))
        # Per-block appearance: base, glass (windows) and accent (cornice, fence bars, joints).
        base, glass, accent = np.zeros((3, n + 1), np.uint16)
        floor, spacing, offset = rng.uniform(1.7, 2.3, n), rng.uniform(1.5, 2.6, n), rng.random(n)
        for i, (_, _, name, _) in enumerate(blocks):
            if name == "building":
                rgb = self.colour(BUILDING, self.pick(_FACADE_COLOURS), 12)
                if far:  # haze: the back row fades towards the sky
                    rgb = 0.7 * rgb + 0.3 * self.colour(SKY, _HAZE, 4)
                base[i] = cv.material(BUILDING, rgb)
                glass[i] = cv.material(BUILDING, self.colour(BUILDING, (60, 72, 92), 10))
                accent[i] = cv.material(BUILDING, rgb * 0.75)
            elif name == "vegetation":
                base[i] = accent[i] = cv.material(
                    VEGETATION, self.colour(VEGETATION, (70, 125, 50), 12)
                )
            elif name == "wall":
                rgb = self.colour(WALL, self.pick(((175, 170, 160), (150, 140, 120))), 10)
                base[i], accent[i] = cv.material(WALL, rgb), cv.material(WALL, rgb * 0.8)
            elif name == "fence":
                rgb = self.colour(FENCE, (120, 110, 95), 10)
                base[i] = cv.material(FENCE, rgb)
                accent[i] = cv.material(FENCE, np.minimum(rgb * 1.4, 255))
        u = Z / spacing[k] + offset[k]  # (1, w') position along the facade, in window bays
        building = kk == 1
        win_col = building & (np.abs(u % 1.0 - 0.575) < 0.275)
        shop_col = building & (((0.5 * u) % 1.0) < 0.7)
        fl = floor[k]
        storeys = np.abs((Y / fl) % 1.0 - 0.55) < 0.25
        storeys &= np.abs(Y - 0.5 * (fl + col_top - 0.5)) < 0.5 * (col_top - 0.5 - fl)
        storeys &= win_col
        storeys |= shop_col & (np.abs(Y - 0.825) < 0.575)
        joint_col = ((kk == 3) | (kk == 4)) & ((Z % np.where(kk == 4, 0.6, 2.0)) < 0.03 + 0.012 * Z)
        trim = Y > np.where(building, col_top - 0.35, np.inf)  # cornice
        trim |= np.abs(Y - np.where(kk == 4, 0.85 * col_top, -9.0)) < 0.06  # fence rail
        trim |= joint_col
        out = np.where(storeys, glass[k], np.where(trim, accent[k], base[k]))
        cv.mat[region][mask] = out[mask]

    def end_facade(self) -> None:
        """Buildings and trees across the far end of the street."""
        cv, rng, ze = self.cv, self.rng, self.z_end
        X = -self.back[0] - rng.uniform(0, 5)
        while X < self.back[1] + 5:
            Xb = X + rng.uniform(3.0, 10.0)
            if rng.random() < 0.8:
                hb = rng.uniform(3.0, 20.0)
                rgb = 0.6 * self.colour(BUILDING, self.pick(_FACADE_COLOURS), 12)
                rgb += 0.4 * self.colour(SKY, _HAZE, 4)
                cv.rect(self.x(X, ze), self.y(hb, ze), self.x(Xb, ze), self.y(0, ze), BUILDING, rgb)
            elif rng.random() < 0.5:
                r = rng.uniform(1.5, 4.0)
                cv.ellipse(
                    self.x(0.5 * (X + Xb), ze),
                    self.y(r, ze),
                    (Xb - X) * self.f / ze * 0.6,
                    r * self.f / ze,
                    VEGETATION,
                    self.colour(VEGETATION, (80, 120, 70), 8),
                )
            X = Xb

    # -- objects
    def shade(self, cx: float, cy: float, rx: float, ry: float, factor: float) -> None:
        """Darken the ground under a vehicle (target only: its light casts contact shadows)."""
        if self.shadow is None:
            return
        b = self.cv.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if b is not None:
            region, ys, xs = b
            self.shadow[region][((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1] *= factor

    def box(
        self,
        x0: float,
        x1: float,
        z0: float,
        z1: float,
        y0: float,
        y1: float,
        cls: int,
        near,
        side,
        top=None,
    ) -> None:
        """An axis-aligned box [x0, x1] x [y0, y1] x [z0, z1]: its visible side, top, near face."""
        cv = self.cv
        sx = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if sx is not None:
            cv.polygon([(self.x(sx, z0), self.y(y0, z0)), (self.x(sx, z1), self.y(y0, z1)),
                        (self.x(sx, z1), self.y(y1, z1)), (self.x(sx, z0), self.y(y1, z0))],
                       cls, side)  # fmt: skip
        if top is not None and y1 < 1.0:
            cv.polygon([(self.x(x0, z0), self.y(y1, z0)), (self.x(x1, z0), self.y(y1, z0)),
                        (self.x(x1, z1), self.y(y1, z1)), (self.x(x0, z1), self.y(y1, z1))],
                       cls, top)  # fmt: skip
        cv.rect(self.x(x0, z0), self.y(y1, z0), self.x(x1, z0), self.y(y0, z0), cls, near)

    def vehicle(
        self, cls: int, X: float, Z: float, facing: int = 1, crossing: bool = False
    ) -> None:
        """A car, truck, bus or tram seen from behind (facing=1), the front (-1) or the side."""
        rng, cv = self.rng, self.cv
        width, length, height = {CAR: (1.2, 2.9, 1.0), TRUCK: (1.6, 5.0, 2.3), BUS: (1.7, 8.0, 2.1),
                                 TRAIN: (1.75, 18.0, 2.4)}[cls]  # fmt: skip
        width, length, height = (
            width * rng.uniform(0.92, 1.08),
            length * rng.uniform(0.85, 1.15),
            height * rng.uniform(0.9, 1.05),
        )
        if cls == CAR:
            paint = self.colour(CAR, self.pick(_CAR_COLOURS), 12)
        elif cls == TRUCK:
            paint = self.colour(TRUCK, self.pick(((220, 220, 215), (150, 150, 150), (60, 90, 150),
                                                  (170, 60, 40))), 10)  # fmt: skip
        elif cls == BUS:
            paint = self.colour(BUS, self.pick(((225, 185, 40), (200, 45, 40), (60, 130, 200))), 10)
        else:
            paint = self.colour(TRAIN, (230, 230, 225), 8)
        glass = self.colour(cls, (45, 55, 72), 5)
        dark = self.colour(cls, (25, 25, 28), 3)
        along, across = (length, width) if not crossing else (width, length)
        x0, x1, z0, z1 = X - across / 2, X + across / 2, Z, Z + along
        s = self.f / Z
        self.shade(
            0.5 * (self.x(x0, Z) + self.x(x1, Z)),
            self.y(0, Z + 0.2 * along),
            0.6 * (x1 - x0) * s,
            0.12 * s + 1,
            0.45,
        )
        wheel_r = 0.22 if cls == CAR else 0.32
        if cls == CAR:  # a lower body with a cabin on top
            body_h, cab = 0.6 * height, (0.1, 0.06)
            self.box(x0, x1, z0, z1, 0.12, body_h, cls, paint, paint * 0.85, paint * 1.05)
            if crossing:
                cx0, cx1 = x0 + 0.25 * across, x1 - 0.22 * across
                cz0, cz1 = z0 + cab[1], z1 - cab[1]
            else:
                cx0, cx1 = x0 + cab[1], x1 - cab[1]
                cz0, cz1 = z0 + 0.28 * along, z1 - 0.25 * along
            self.box(cx0, cx1, cz0, cz1, body_h, height, cls, glass, glass * 1.15, paint)
        else:
            self.box(x0, x1, z0, z1, 0.15, height, cls, paint, paint * 0.85)
            if cls != TRUCK or crossing:  # a band of windows
                if crossing:
                    cv.rect(
                        self.x(x0 + 0.3, Z),
                        self.y(0.85 * height, Z),
                        self.x(x1 - 0.3, Z),
                        self.y(0.5 * height, Z),
                        cls,
                        glass,
                    )
                else:
                    cv.rect(
                        self.x(x0 + 0.1, Z),
                        self.y(0.9 * height, Z),
                        self.x(x1 - 0.1, Z),
                        self.y(0.55 * height, Z),
                        cls,
                        glass,
                    )
            elif facing == -1:  # truck cab windscreen
                cv.rect(
                    self.x(x0 + 0.1, Z),
                    self.y(0.9 * height, Z),
                    self.x(x1 - 0.1, Z),
                    self.y(0.65 * height, Z),
                    cls,
                    glass,
                )
        # wheels: discs on a side view, dark blocks under a rear / front view
        if crossing:
            for wx in (x0 + 0.7, x1 - 0.7):
                cv.ellipse(self.x(wx, Z), self.y(wheel_r, Z), wheel_r * s, wheel_r * s, cls, dark)
        else:
            for wx in (x0 + 0.05, x1 - 0.3):
                cv.rect(
                    self.x(wx, Z), self.y(0.18, Z), self.x(wx + 0.25, Z), self.y(0, Z), cls, dark
                )
            lamp = (200, 30, 30) if facing == 1 else (235, 230, 190)
            for lx in (x0 + 0.05, x1 - 0.25):
                cv.rect(
                    self.x(lx, Z),
                    self.y(0.47, Z),
                    self.x(lx + 0.2, Z),
                    self.y(0.38, Z),
                    cls,
                    self.colour(cls, lamp, 5),
                )

    def person(self, X: float, Z: float, cls: int = PERSON, seat=None) -> None:
        """A standing / walking person, or (with ``seat`` = (dx, Y, bar_dx, bar_Y)) a rider."""
        rng, cv = self.rng, self.cv
        s, xc, yb = self.f / Z, self.x(X, Z), self.y(0, Z)
        h = rng.uniform(1.05, 1.25) * s  # pixels
        skin = self.colour(cls, self.pick(_SKIN), 8)
        shirt = self.colour(cls, self.pick(_CLOTHES), 12)
        pants = self.colour(cls, self.pick(_CLOTHES), 12)
        limb = max(0.05 * h, 0.5)
        if seat is None:
            hip = (xc, yb - 0.5 * h)
            stride = rng.uniform(-0.12, 0.12) * h
            for sgn in (-1, 1):
                cv.segment(*hip, xc + sgn * stride, yb - limb, limb, cls, pants)
            shoulder = (xc + rng.uniform(-0.02, 0.02) * h, yb - 0.8 * h)
            hands = [
                (shoulder[0] + sgn * (0.1 * h + 0.5 * stride), yb - 0.45 * h) for sgn in (-1, 1)
            ]
        else:
            dx, seat_y, bar_dx, bar_y = seat
            hip = (xc + dx * s, self.y(seat_y, Z))
            cv.segment(*hip, xc + 0.1 * dx * s, self.y(0.25, Z), limb, cls, pants)
            shoulder = (hip[0] + 0.35 * (bar_dx - dx) * s, hip[1] - 0.33 * h)
            hands = [(xc + bar_dx * s, self.y(bar_y, Z))]
        cv.segment(*hip, *shoulder, 1.9 * limb, cls, shirt)
        for hand in hands:
            cv.segment(*shoulder, *hand, 0.8 * limb, cls, shirt)
        r = 0.075 * h
        cv.ellipse(shoulder[0], shoulder[1] - 1.6 * r, r, 1.2 * r, cls, skin)
        if cls == RIDER and rng.random() < 0.6:  # helmet
            cv.ellipse(
                shoulder[0],
                shoulder[1] - 2.0 * r,
                1.1 * r,
                0.9 * r,
                cls,
                self.colour(cls, self.pick(_CLOTHES), 10),
            )

    def two_wheeler(self, cls: int, X: float, Z: float, ridden: bool) -> None:
        """A bicycle or motorcycle in side view (foreshortened), optionally with its rider."""
        rng, cv = self.rng, self.cv
        s = self.f / Z
        d = self.pick((-1.0, 1.0)) * rng.uniform(0.55, 1.0)  # facing and foreshortening
        r = 0.23 if cls == BICYCLE else 0.21
        base = 0.38 if cls == BICYCLE else 0.45
        rear, front = (X - base * d, r), (X + base * d, r)
        frame = self.colour(cls, self.pick(_CAR_COLOURS), 12)
        dark = self.colour(cls, (30, 30, 32), 4)
        P = lambda X_, Y_: (self.x(X_, Z), self.y(Y_, Z))  # noqa: E731
        if cls == BICYCLE:
            for hub in (rear, front):
                cv.ring(*P(*hub), r * s, 0.06 * s, cls, dark)
            seat, crank, bar = (X - 0.15 * d, 0.62), (X, 0.22), (X + 0.3 * d, 0.68)
            for a, b in (
                (rear, seat),
                (seat, crank),
                (crank, rear),
                (seat, bar),
                (bar, front),
                (crank, (X + 0.27 * d, 0.58)),
            ):
                cv.segment(*P(*a), *P(*b), max(0.025 * s, 0.5), cls, frame)
        else:
            for hub in (rear, front):
                cv.ellipse(*P(*hub), r * s, r * s, cls, dark)
            body = [
                P(X - 0.3 * d, 0.3),
                P(X + 0.3 * d, 0.3),
                P(X + 0.25 * d, 0.6),
                P(X - 0.35 * d, 0.55),
            ]
            cv.polygon(body, cls, frame)
            cv.segment(*P(X + 0.25 * d, 0.6), *P(*front), 0.04 * s, cls, dark)
            cv.segment(*P(X - 0.35 * d, 0.55), *P(X - 0.05 * d, 0.6), 0.06 * s, cls, dark)
            seat, bar = (X - 0.2 * d, 0.62), (X + 0.25 * d, 0.8)
        if ridden:
            self.person(X, Z, RIDER, seat=(seat[0] - X, seat[1], bar[0] - X, bar[1]))

    def pole(self, X: float, Z: float, toward_road: float) -> None:
        """A pole with a traffic light, a sign, a street lamp or nothing on it."""
        rng, cv = self.rng, self.cv
        s, xc = self.f / Z, self.x(X, Z)
        h, half = rng.uniform(2.6, 4.5), 0.05
        grey = self.colour(POLE, (115, 115, 120), 10)
        kind = self.pick(("light", "light", "sign", "sign", "lamp", "bare"))
        if kind == "sign":
            h = rng.uniform(1.9, 2.6)
        cv.rect(self.x(X - half, Z), self.y(h, Z), self.x(X + half, Z), self.y(0, Z), POLE, grey)
        if kind == "lamp" or (kind == "light" and rng.random() < 0.4):  # an arm over the road
            arm = rng.uniform(0.8, 2.5) * toward_road
            cv.segment(
                xc, self.y(h, Z), self.x(X + arm, Z), self.y(h + 0.2, Z), 0.04 * s, POLE, grey
            )
            X, xc, h = X + arm, self.x(X + arm, Z), h + 0.2
            if kind == "lamp":
                cv.ellipse(xc, self.y(h, Z), 0.2 * s, 0.07 * s, POLE, grey * 0.8)
        if kind == "light":
            w, hh = 0.16, 0.85
            top = h
            box = self.colour(LIGHT, (35, 35, 38), 5)
            cv.rect(
                self.x(X - w, Z), self.y(top, Z), self.x(X + w, Z), self.y(top - hh, Z), LIGHT, box
            )
            lit = int(rng.random() * 3)
            for k, rgb in enumerate(((230, 40, 30), (240, 170, 30), (40, 210, 90))):
                rgb = rgb if k == lit else tuple(0.35 * np.array(rgb))
                cv.ellipse(
                    xc,
                    self.y(top - (0.17 + 0.26 * k) * hh / 0.85, Z),
                    0.09 * s,
                    0.09 * s,
                    LIGHT,
                    self.colour(LIGHT, rgb, 5),
                )
        elif kind == "sign":
            cy, r = self.y(h - 0.25, Z), 0.25 * s
            shape = int(rng.random() * 4)
            if shape == 0:  # prohibition: red ring, white face
                cv.ellipse(xc, cy, r, r, SIGN, self.colour(SIGN, (200, 30, 30), 8))
                cv.ellipse(xc, cy, 0.7 * r, 0.7 * r, SIGN, self.colour(SIGN, (235, 235, 235), 5))
            elif shape == 1:  # information: blue square
                cv.rect(xc - r, cy - r, xc + r, cy + r, SIGN, self.colour(SIGN, (30, 70, 170), 8))
                cv.rect(
                    xc - 0.3 * r,
                    cy - 0.6 * r,
                    xc + 0.3 * r,
                    cy + 0.6 * r,
                    SIGN,
                    self.colour(SIGN, (235, 235, 235), 5),
                )
            elif shape == 2:  # warning: red triangle
                cv.polygon(
                    [(xc - r, cy + 0.8 * r), (xc + r, cy + 0.8 * r), (xc, cy - r)],
                    SIGN,
                    self.colour(SIGN, (200, 30, 30), 8),
                )
                cv.polygon(
                    [
                        (xc - 0.55 * r, cy + 0.55 * r),
                        (xc + 0.55 * r, cy + 0.55 * r),
                        (xc, cy - 0.45 * r),
                    ],
                    SIGN,
                    self.colour(SIGN, (240, 240, 235), 5),
                )
            else:  # priority road: yellow diamond
                cv.polygon(
                    [(xc - r, cy), (xc, cy - r), (xc + r, cy), (xc, cy + r)],
                    SIGN,
                    self.colour(SIGN, (235, 200, 40), 8),
                )

    def tree(self, X: float, Z: float) -> None:
        rng, cv = self.rng, self.cv
        s, xc = self.f / Z, self.x(X, Z)
        trunk_h, crown = rng.uniform(1.5, 3.0), rng.uniform(0.9, 1.8)
        cv.rect(
            self.x(X - 0.08, Z),
            self.y(trunk_h + 0.5 * crown, Z),
            self.x(X + 0.08, Z),
            self.y(0, Z),
            VEGETATION,
            self.colour(VEGETATION, (95, 70, 50), 8),
        )
        leaf = self.colour(VEGETATION, self.pick(((70, 130, 50), (55, 110, 45), (95, 140, 60))), 10)
        for _ in range(3 + int(rng.random() * 3)):
            dx, dy = rng.normal(0, 0.4, 2) * crown
            rr = crown * rng.uniform(0.5, 0.8)
            cv.ellipse(
                xc + dx * s,
                self.y(trunk_h + crown + dy, Z),
                rr * s,
                0.85 * rr * s,
                VEGETATION,
                leaf * rng.uniform(0.85, 1.1),
            )

    def void(self, X: float, Z: float) -> None:
        """A kiosk, bin or advertising column: in no class, so labelled ignore."""
        rng = self.rng
        half, h = rng.uniform(0.2, 0.5), rng.uniform(0.8, 2.2)
        self.cv.rect(
            self.x(X - half, Z),
            self.y(h, Z),
            self.x(X + half, Z),
            self.y(0, Z),
            IGNORE_INDEX,
            rng.uniform(40, 220, 3).astype(np.float32),
        )

    # -- the whole scene
    def compose(self) -> None:
        """Ground and facades back to front, then every object sorted far to near."""
        rng, cv = self.rng, self.cv
        self.ground()
        self.end_facade()
        for side in (0, 1):
            self.facade_plane(side, self.back[side], self._blocks(front=False), far=True)
            self.facade_plane(side, self.front[side], self.blocks[side], far=False)
        z_min = self.f / (self.h - self.vh) * 1.1  # nearer than this, an object's foot is off-image
        objects: list[tuple[float, Callable[..., None], dict]] = []

        def add(Z: float, draw: Callable[..., None], **kw) -> None:
            if Z > z_min:
                objects.append((Z, draw, kw))

        def count(lo: int, hi: int) -> int:
            return lo + int(rng.random() * (hi - lo))

        def on_walk(side: int) -> float:  # an X on the sidewalk of one side
            lo = self.road[side] + self.verge[side] + 0.3
            return (1 if side else -1) * rng.uniform(lo, max(self.walk[side] - 0.2, lo))

        def depth(lo: float, hi: float) -> float:  # log-uniform: as many far as near
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

        lane_lo, lane_hi = -self.road[0] + 0.8, self.road[1] - 0.8
        for _ in range(count(1, 9)):
            if rng.random() < 0.6:  # driving: right-hand traffic, oncoming on the left
                X = rng.uniform(lane_lo, lane_hi)
                add(depth(2.5, 50.0), self.vehicle, cls=CAR, X=X, facing=-1 if X < -0.6 else 1)
            else:  # parked along the kerb
                side = count(0, 2)
                add(
                    depth(2.5, 40.0),
                    self.vehicle,
                    cls=CAR,
                    X=(2 * side - 1) * (self.road[side] - 0.75),
                )
        for cls, p in ((TRUCK, 0.3), (BUS, 0.25)):
            if rng.random() < p:
                X = rng.uniform(lane_lo, lane_hi)
                add(depth(4.0, 50.0), self.vehicle, cls=cls, X=X, facing=-1 if X < -0.6 else 1)
        if rng.random() < 0.04:
            add(depth(6.0, 40.0), self.vehicle, cls=TRAIN, X=0.5 * (lane_lo + lane_hi))
        if self.cross is not None:
            for _ in range(count(0, 3)):
                cls = CAR if rng.random() < 0.8 else self.pick((TRUCK, BUS))
                add(
                    self.cross[0] + rng.uniform(1.5, 3.5),
                    self.vehicle,
                    cls=cls,
                    X=rng.uniform(-12, 12),
                    crossing=True,
                )
            if rng.random() < 0.5:  # people on the zebra crossing
                for _ in range(count(1, 4)):
                    add(
                        self.cross[0] - rng.uniform(0.6, 2.0),
                        self.person,
                        X=rng.uniform(lane_lo, lane_hi),
                    )
        for _ in range(rng.poisson(2.5)):
            add(depth(2.0, 35.0), self.person, X=on_walk(count(0, 2)))
        for cls, p_ride, p_park in ((BICYCLE, 0.35, 0.3), (MOTORCYCLE, 0.25, 0.15)):
            if rng.random() < p_ride:
                add(
                    depth(2.5, 35.0),
                    self.two_wheeler,
                    cls=cls,
                    X=rng.uniform(lane_lo, lane_hi),
                    ridden=True,
                )
            if rng.random() < p_park:
                add(
                    depth(2.0, 30.0),
                    self.two_wheeler,
                    cls=cls,
                    X=on_walk(count(0, 2)),
                    ridden=False,
                )
        for _ in range(count(1, 7)):
            side = count(0, 2)
            X = (2 * side - 1) * (self.road[side] + self.verge[side] + 0.25)
            add(depth(2.5, 40.0), self.pole, X=X, toward_road=1 - 2 * side)
        for _ in range(count(0, 6)):
            side = count(0, 2)
            inset = 0.5 * self.verge[side] if self.verge[side] else 0.6
            add(depth(2.5, 40.0), self.tree, X=(2 * side - 1) * (self.road[side] + inset))
        if rng.random() < 0.15:  # an unlabelled thing on the sidewalk (void in Cityscapes terms)
            add(depth(2.5, 25.0), self.void, X=on_walk(count(0, 2)))
        for Z, draw, kw in sorted(objects, key=lambda o: -o[0]):
            draw(Z=Z, **kw)
        if rng.random() < 0.2:  # the ego vehicle's bonnet at the bottom, ignored as in Cityscapes
            u = cv.xs / self.w - 0.5
            edge = self.h * (1.0 - rng.uniform(0.02, 0.06) - 0.04 * (1 - 4 * u * u))  # (1, W)
            cv.paint(np.s_[:, :], cv.ys >= edge, IGNORE_INDEX, self.colour(CAR, (40, 40, 45), 5))

    # -- appearance
    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Albedo, texture, light and camera: the uint8 image (H, W, 3) and labels (H, W)."""
        rng, cv, h, w = self.rng, self.cv, self.h, self.w
        classes = np.array(cv.classes, np.uint8)
        label = classes[cv.mat]
        zenith, horizon = self.pick(_SKIES)  # weather: clear, hazy or overcast
        sky_rgb = np.stack([self.colour(SKY, zenith, 8), self.colour(SKY, horizon, 6)])
        table = np.stack(cv.colours)  # (M, 3)
        if self.target:
            table = _tone(table, classes)
            sky_rgb = _tone(sky_rgb, np.array([SKY, SKY]))
        img = np.take(np.ascontiguousarray(table.T), cv.mat, axis=1)  # (3, H, W) albedo
        t = np.clip(cv.ys / max(self.vh, 1.0), 0, 1)  # (H, 1): sky from zenith to horizon
        sky = cv.mat == 0
        for c in range(3):
            img[c][sky] = np.broadcast_to((1 - t) * sky_rgb[0, c] + t * sky_rgb[1, c], (h, w))[sky]
        smooth = _smooth_noise(rng, h, w, 6, 12)
        if not self.target:  # a clean render: faint shading only
            img *= 1.0 + _SOURCE_SMOOTH[label] * smooth
            return _to_uint8(img), label
        # Surface textures: grain at the pixel scale and oriented stripes, per class.
        tex = _TARGET_SMOOTH[label] * smooth
        grain = 0.6 * _noise(rng, (h, w)) + 0.8 * _block_noise(rng, h, w, 2)
        tex += _TARGET_FINE[label] * grain
        phase = (cv.xs * _STRIPE_COS[label] + cv.ys * _STRIPE_SIN[label]) * _STRIPE_FREQ[label]
        tex += _STRIPE_AMP[label] * np.sign(np.sin(phase * (128.0 / h)))
        tex[sky] += 0.2 * np.maximum(_smooth_noise(rng, h, w, 4, 8)[sky], 0)  # clouds
        # Light: shadows on the ground (trees; the buildings of one side), then a global
        # gain with a horizontal gradient and vignetting, and a colour cast.
        shade = self.shadow
        ground = _IS_GROUND[label]
        leafy = _smooth_noise(rng, h, w, 12, 24) > rng.uniform(0.7, 1.2)
        X = (cv.xs - self.uv) / np.maximum(cv.ys - self.vh, 1.0)
        cast = (cv.ys > self.vh + 1) & (self.pick((-1.0, 1.0)) * X > rng.uniform(0.0, 4.0))
        shade[ground & (leafy | cast)] *= rng.uniform(0.55, 0.75)
        shade[~ground] = 1.0
        u, v = cv.xs / w - 0.5, cv.ys / h - 0.5
        gain = rng.uniform(0.85, 1.15) * (1.0 + rng.uniform(-0.4, 0.4) * u)  # (1, W)
        gain = gain * (1.0 - rng.uniform(0.2, 0.5) * (u * u + v * v))  # (H, W)
        light = (1.0 + tex) * shade * gain
        cast_rgb = np.array([1.08, 1.0, 0.84], np.float32) * rng.uniform(0.95, 1.05, 3)
        img *= light * cast_rgb[:, None, None].astype(np.float32)
        # Camera: slight defocus, shot and read noise, then a flat tone curve.
        img = _blur3(img, rng.uniform(0.6, 1.0))
        # Noise: luminance at the pixel scale, colour noise in 2x2 blotches (demosaicing).
        sigma = np.sqrt(rng.uniform(2.0, 4.0) ** 2 + rng.uniform(0.1, 0.25) * np.maximum(img[1], 0))
        chroma = np.repeat(np.repeat(_noise(rng, (3, -(-h // 2), -(-w // 2))), 2, 1), 2, 2)
        chroma = chroma[:, :h, :w]
        chroma += 1.3 * _noise(rng, (h, w))
        chroma *= 0.75 * sigma
        img += chroma
        levels = np.arange(256, dtype=np.float32)
        curve = 110.0 + rng.uniform(0.7, 0.9) * (levels - 110.0) + rng.uniform(5, 20)
        curve = 255.0 * (np.clip(curve, 0, 255) / 255.0) ** rng.uniform(0.8, 1.1)
        return np.clip(curve + 0.5, 0, 255).astype(np.uint8)[_to_uint8(img)], label


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) uint8, rounded and clipped."""
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise (triangular, from random bytes: fast)."""
    bits = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    out = bits[0].astype(np.float32)
    out += bits[1]
    out -= 255.0
    out *= 1.0 / 104.5
    return out


def _smooth_noise(rng: np.random.Generator, h: int, w: int, gh: int, gw: int) -> np.ndarray:
    """(h, w) float32 noise, bilinear from a (gh + 1, gw + 1) grid of standard normals."""
    grid = rng.standard_normal((gh + 1, gw + 1), dtype=np.float32)
    return _interp(h, gh) @ grid @ _interp(w, gw).T


def _block_noise(rng: np.random.Generator, h: int, w: int, block: int) -> np.ndarray:
    """(h, w) float32 unit noise, constant over block x block cells."""
    coarse = _noise(rng, (-(-h // block), -(-w // block)))
    return np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w]


def _blur3(img: np.ndarray, strength: float) -> np.ndarray:
    """A 3x3 binomial blur of a (3, H, W) image (edges replicated), mixed with the original."""
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    v = p[:, :-2] + p[:, 2:]  # (3, H, W + 2); in place from here: big temporaries are slow
    v += p[:, 1:-1]
    v += p[:, 1:-1]
    out = v[:, :, :-2] + v[:, :, 2:]
    out += v[:, :, 1:-1]
    out += v[:, :, 1:-1]
    out *= strength / 16.0
    img *= 1.0 - strength
    out += img
    return out


# ----------------------------------------------------------------------------- public API


def generate_scene(
    spec: BuiltinSpec, domain: str, split: str, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Make one image of the benchmark, the same every time.

    Args:
        spec: the benchmark (seed, size, split sizes).
        domain: ``"source"`` or ``"target"``.
        split: ``"train"`` (both domains) or ``"val"`` (target only).
        index: 0 <= index < spec.count(domain, split).

    Returns:
        image: uint8 (H, W, 3) RGB; label: uint8 (H, W), 19-class train ids, 255 = ignore.
    """
    count = spec.count(domain, split)
    if not 0 <= index < count:
        raise IndexError(f"builtin {domain}/{split} has {count} images; no index {index}")
    rng = np.random.default_rng(
        [spec.seed, DOMAINS.index(domain), SPLITS[domain].index(split), index]
    )
    scene = _Scene(spec.size[0], spec.size[1], domain == "target", rng)
    scene.compose()
    return scene.render()


_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def write_demo(
    out: Path, spec: BuiltinSpec, progress: Callable[[int, int], None] | None = None
) -> dict[str, Path]:
    """Write the benchmark to disk in the real layouts, so the file loaders can read it.

    ``out/gta5/{images,labels}/00001.png`` hold the source (labels: Cityscapes label ids, as in
    GTA5); ``out/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` the target (target train
    labels are written too, for diagnosis only). Ignored pixels become label id 0 (unlabeled).

    Args:
        out: a new or empty folder.
        spec: the benchmark to write.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        ``{"source_root": out / "gta5", "target_root": out / "cityscapes"}``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder",
                        hint="choose a new or empty folder for the demo data")  # fmt: skip
    to_label_id = np.zeros(256, np.uint8)  # train id -> Cityscapes label id; ignore -> 0
    to_label_id[:19] = class_protocol(19).train_to_label_id
    source_root, target_root = out / "gta5", out / "cityscapes"
    jobs: list[tuple[str, str, int, Path, Path]] = []
    for i in range(spec.source_train):
        name = f"{i + 1:05d}.png"
        jobs.append(
            ("source", "train", i, source_root / "images" / name, source_root / "labels" / name)
        )
    for split in SPLITS["target"]:
        cities = _CITIES[split]
        for i in range(spec.count("target", split)):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19:06d}"
            jobs.append(("target", split, i,
                         target_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         target_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))  # fmt: skip
    for folder in {p.parent for job in jobs for p in job[3:]} | {source_root, target_root}:
        folder.mkdir(parents=True, exist_ok=True)
    for done, (domain, split, i, image_path, label_path) in enumerate(jobs, start=1):
        image, label = generate_scene(spec, domain, split, i)
        Image.fromarray(image, "RGB").save(image_path)
        Image.fromarray(to_label_id[label], "L").save(label_path)
        if progress is not None:
            progress(done, len(jobs))
    return {"source_root": source_root, "target_root": target_root}
