"""The street of a scene: perspective, ground, sidewalks and facades."""

from __future__ import annotations

import numpy as np

from diga.data.builtin.canvas import _Canvas
from diga.data.builtin.palette import (
    _ASPHALT,
    _FACADE_COLOURS,
    _HAZE,
    _HEIGHTS,
    _KINDS,
    BUILDING,
    FENCE,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEGETATION,
    WALL,
)


class _Street:
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
