"""What stands in the street: vehicles, people, two-wheelers, poles, trees and clutter."""

from __future__ import annotations

import numpy as np

from diga.data.builtin.palette import (
    _CAR_COLOURS,
    _CLOTHES,
    _SKIN,
    BICYCLE,
    BUS,
    CAR,
    LIGHT,
    PERSON,
    POLE,
    RIDER,
    SIGN,
    TRAIN,
    TRUCK,
    VEGETATION,
)
from diga.data.builtin.street import _Street
from diga.data.classes import IGNORE_INDEX


class _StreetObjects(_Street):
    """The street plus the objects ``_Scene.compose`` places in it, each drawn in perspective."""

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
