"""One scene of the benchmark: compose the street and its objects, then render a domain's look."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diga.data.builtin.canvas import _block_noise, _blur3, _noise, _smooth_noise, _to_uint8
from diga.data.builtin.objects import _StreetObjects
from diga.data.builtin.palette import (
    _IS_GROUND,
    _SKIES,
    _SOURCE_SMOOTH,
    _STRIPE_AMP,
    _STRIPE_COS,
    _STRIPE_FREQ,
    _STRIPE_SIN,
    _TARGET_FINE,
    _TARGET_SMOOTH,
    BICYCLE,
    BUS,
    CAR,
    MOTORCYCLE,
    SKY,
    TRAIN,
    TRUCK,
    _tone,
)
from diga.data.builtin.spec import DOMAINS, SPLITS, BuiltinSpec
from diga.data.classes import IGNORE_INDEX


class _Scene(_StreetObjects):
    """A whole street scene: ``compose`` paints it, ``render`` gives image and labels."""

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
