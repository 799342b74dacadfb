"""The canvas shapes are painted into, and the noise and blur of the renderer."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from diga.data.builtin.palette import SKY


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
