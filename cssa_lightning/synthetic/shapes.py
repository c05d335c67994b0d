"""Object classes of the synthetic world: polygon silhouettes, one draw function per class.

Shapes live in a local frame where the object fits in ``[-1, 1] x [-1, 1]``, x to the right
and y DOWN (like image coordinates). Each class is a list of filled polygons (:class:`Part`);
:mod:`cssa_lightning.synthetic.render` places, rotates, recolours and draws them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

# --------------------------------------------------------------------------
# Geometry helpers. Shapes live in a local frame where the object fits in
# [-1, 1] x [-1, 1], x to the right and y DOWN (like image coordinates).
# --------------------------------------------------------------------------

Points = np.ndarray  # (N, 2) float array


def _ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    t0: float = 0.0,
    t1: float = 2 * math.pi,
    n: int = 28,
) -> Points:
    """Points on an ellipse (arc from angle t0 to t1, y down)."""
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _circle(cx: float, cy: float, r: float, n: int = 24) -> Points:
    return _ellipse(cx, cy, r, r, n=n)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Points:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _poly(*pts: tuple[float, float]) -> Points:
    return np.array(pts, dtype=float)


def _star(points: int, r_out: float, r_in: float, cx: float = 0.0, cy: float = 0.0) -> Points:
    """A regular star polygon with one tip pointing up."""
    t = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _band(
    cx: float,
    cy: float,
    rx_out: float,
    ry_out: float,
    rx_in: float,
    ry_in: float,
    t0: float,
    t1: float,
    n: int = 16,
) -> Points:
    """A thick arc: outer ellipse arc forward, inner ellipse arc back.

    PIL polygons cannot have holes, so rings and handles are drawn as bands.
    """
    t = np.linspace(t0, t1, n)
    outer = np.stack([cx + rx_out * np.cos(t), cy + ry_out * np.sin(t)], axis=1)
    inner = np.stack([cx + rx_in * np.cos(t[::-1]), cy + ry_in * np.sin(t[::-1])], axis=1)
    return np.concatenate([outer, inner])


def _rotated(pts: Points, degrees: float, cx: float = 0.0, cy: float = 0.0) -> Points:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    d = pts - (cx, cy)
    return np.stack([cx + c * d[:, 0] - s * d[:, 1], cy + s * d[:, 0] + c * d[:, 1]], axis=1)


@dataclass(frozen=True)
class Part:
    """One filled polygon of a shape.

    Attributes:
        points: (N, 2) polygon in the object's local frame.
        color: Fill colour before jitter.
        outline: Whether to draw a dark outline (off for small details,
            which would turn into dark smudges at 64 px).
    """

    points: Points
    color: RGB
    outline: bool = True


# Colours shared by several classes.
_BROWN: RGB = (115, 70, 30)
_LEAF_GREEN: RGB = (60, 160, 50)
_DARK: RGB = (35, 35, 40)
_WHITE: RGB = (245, 245, 245)
_GLASS: RGB = (170, 215, 245)
_GOLD: RGB = (225, 180, 40)
_RED: RGB = (205, 35, 35)


def _apple() -> list[Part]:
    return [
        Part(_rect(-0.05, -0.9, 0.07, -0.5), _BROWN, outline=False),
        Part(_ellipse(0.0, 0.1, 0.82, 0.78), _RED),
        Part(_rotated(_ellipse(0.3, -0.72, 0.26, 0.12), -25, 0.3, -0.72), _LEAF_GREEN),
    ]


def _orange() -> list[Part]:
    # Same silhouette as the apple but orange, rounder and without a stem:
    # confusable with "apple".
    return [
        Part(_circle(0.0, 0.05, 0.85), (245, 140, 20)),
        Part(_rotated(_ellipse(0.18, -0.82, 0.24, 0.11), -20, 0.18, -0.82), _LEAF_GREEN),
    ]


def _ball() -> list[Part]:
    return [
        Part(_circle(0.0, 0.0, 0.88), (40, 90, 215)),
        Part(_ellipse(0.0, 0.0, 0.86, 0.26), _WHITE, outline=False),
        Part(_circle(0.0, 0.0, 0.16), (240, 200, 30), outline=False),
    ]


def _planet() -> list[Part]:
    ring: RGB = (230, 195, 130)
    return [
        # Back half of the ring, then the planet, then the front half, so the
        # ring looks like it goes around the planet.
        Part(_band(0.0, 0.0, 1.0, 0.34, 0.72, 0.2, math.pi, 2 * math.pi), ring),
        Part(_circle(0.0, 0.0, 0.6), (145, 70, 195)),
        Part(_band(0.0, 0.0, 1.0, 0.34, 0.72, 0.2, 0.0, math.pi), ring),
    ]


def _sun() -> list[Part]:
    return [
        Part(_star(12, 1.0, 0.62), (250, 170, 20)),
        Part(_circle(0.0, 0.0, 0.6), (255, 225, 60), outline=False),
    ]


def _star_shape() -> list[Part]:
    return [Part(_star(5, 1.0, 0.42, cy=0.08), (250, 215, 40))]


def _starfish() -> list[Part]:
    # Five arms like "star" but fatter and coral-coloured: confusable pair.
    return [
        Part(_star(5, 1.0, 0.55, cy=0.08), (235, 105, 70)),
        Part(_circle(0.0, 0.08, 0.18), (250, 170, 140), outline=False),
    ]


def _crescent(thickness: float) -> Points:
    """Left half of the unit circle minus a half ellipse: a crescent."""
    t = np.linspace(math.pi / 2, 3 * math.pi / 2, 18)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([(1.0 - thickness) * np.cos(t[::-1]), np.sin(t[::-1])], axis=1)
    return np.concatenate([outer, inner])


def _moon() -> list[Part]:
    return [Part(_crescent(0.62) + (0.3, 0.0), (230, 228, 200))]


def _banana() -> list[Part]:
    # A thinner yellow crescent turned on its side with brown tips:
    # confusable with "moon".
    body = _rotated(_crescent(0.42) + (0.2, 0.0), -90)
    return [
        Part(body, (245, 210, 40)),
        Part(_circle(-1.0, 0.2, 0.09), _BROWN, outline=False),
        Part(_circle(1.0, 0.2, 0.09), _BROWN, outline=False),
    ]


def _house() -> list[Part]:
    return [
        Part(_rect(-0.7, -0.1, 0.7, 0.9), (225, 190, 140)),
        Part(_poly((-0.92, -0.02), (0.0, -0.92), (0.92, -0.02)), (170, 50, 40)),
        Part(_rect(-0.15, 0.4, 0.15, 0.9), (100, 60, 30), outline=False),
        Part(_rect(0.3, 0.12, 0.56, 0.38), _GLASS, outline=False),
    ]


def _tree() -> list[Part]:
    green: RGB = (35, 135, 50)
    return [
        Part(_rect(-0.13, 0.45, 0.13, 1.0), _BROWN),
        Part(_poly((-0.78, 0.55), (0.0, -0.25), (0.78, 0.55)), green),
        Part(_poly((-0.6, 0.1), (0.0, -1.0), (0.6, 0.1)), green),
    ]


def _wheels(xs: Sequence[float], y: float, r: float) -> list[Part]:
    return [Part(_circle(x, y, r, n=16), _DARK, outline=False) for x in xs]


def _car() -> list[Part]:
    # Short red body with a cabin; "bus" is a long yellow box: confusable pair
    # (vehicle body on two wheels).
    return [
        Part(_poly((-0.55, -0.05), (-0.35, -0.55), (0.35, -0.55), (0.55, -0.05)), _RED),
        Part(_poly((-0.4, -0.1), (-0.27, -0.45), (0.27, -0.45), (0.4, -0.1)), _GLASS, False),
        Part(_rect(-1.0, -0.1, 1.0, 0.45), _RED),
        *_wheels((-0.55, 0.55), 0.45, 0.25),
    ]


def _bus() -> list[Part]:
    windows = [
        Part(_rect(x, -0.4, x + 0.32, -0.08), _GLASS, outline=False)
        for x in (-0.85, -0.43, -0.01, 0.41)
    ]
    return [
        Part(_rect(-1.0, -0.6, 1.0, 0.45), (240, 185, 30)),
        *windows,
        *_wheels((-0.6, 0.6), 0.45, 0.22),
    ]


def _fish() -> list[Part]:
    teal: RGB = (40, 160, 200)
    return [
        Part(_poly((0.4, 0.0), (1.0, -0.45), (1.0, 0.45)), (30, 120, 160)),
        Part(_ellipse(-0.15, 0.0, 0.72, 0.42), teal),
        Part(_circle(-0.52, -0.08, 0.09, n=10), _DARK, outline=False),
    ]


def _boat() -> list[Part]:
    return [
        Part(_rect(-0.04, -0.95, 0.04, 0.4), (80, 50, 25), outline=False),
        Part(_poly((0.08, -0.9), (0.08, 0.25), (0.78, 0.25)), _WHITE),
        Part(_poly((-1.0, 0.35), (1.0, 0.35), (0.7, 0.78), (-0.7, 0.78)), (140, 80, 40)),
    ]


def _cup() -> list[Part]:
    blue: RGB = (90, 160, 225)
    return [
        Part(_band(0.42, 0.05, 0.4, 0.36, 0.2, 0.17, -math.pi / 2, math.pi / 2), blue),
        Part(_poly((-0.65, -0.6), (0.5, -0.6), (0.38, 0.75), (-0.53, 0.75)), blue),
    ]


def _key() -> list[Part]:
    return [
        Part(_rect(0.55, 0.05, 0.68, 0.38), _GOLD, outline=False),
        Part(_rect(0.8, 0.05, 0.92, 0.3), _GOLD, outline=False),
        Part(_rect(-0.2, -0.1, 0.97, 0.1), _GOLD),
        Part(_circle(-0.55, 0.0, 0.42), _GOLD),
        Part(_circle(-0.55, 0.0, 0.15, n=12), (60, 45, 25), outline=False),
    ]


def _bell() -> list[Part]:
    top = _ellipse(0.0, -0.3, 0.48, 0.55, math.pi, 2 * math.pi, n=14)
    body = np.concatenate([top, _poly((0.6, 0.42), (0.85, 0.68), (-0.85, 0.68), (-0.6, 0.42))])
    return [
        Part(_circle(0.0, 0.78, 0.16, n=12), (120, 80, 30), outline=False),
        Part(_rect(-0.08, -0.98, 0.08, -0.8), _GOLD, outline=False),
        Part(body, _GOLD),
    ]


def _mushroom() -> list[Part]:
    # Red dome with white dots on a thick white stem; "umbrella" is a red dome
    # with a scalloped edge on a thin dark handle: confusable pair.
    return [
        Part(_rect(-0.26, 0.0, 0.26, 0.88), (240, 230, 210)),
        Part(_ellipse(0.0, 0.08, 0.95, 0.88, math.pi, 2 * math.pi, n=20), _RED),
        Part(_circle(-0.45, -0.2, 0.13, n=10), _WHITE, outline=False),
        Part(_circle(0.1, -0.5, 0.15, n=10), _WHITE, outline=False),
        Part(_circle(0.5, -0.15, 0.12, n=10), _WHITE, outline=False),
    ]


def _umbrella() -> list[Part]:
    arc = _ellipse(0.0, -0.05, 1.0, 0.8, math.pi, 2 * math.pi, n=20)
    # Scalloped lower edge going back from right to left.
    x = np.linspace(1.0, -1.0, 33)
    y = -0.05 - 0.14 * np.abs(np.sin(x * 2 * math.pi))
    canopy = np.concatenate([arc, np.stack([x, y], axis=1)])
    dark: RGB = (55, 55, 60)
    return [
        Part(_rect(-0.05, -0.1, 0.05, 0.8), dark, outline=False),
        Part(_band(0.17, 0.8, 0.22, 0.2, 0.12, 0.1, 0.0, math.pi, n=10), dark, outline=False),
        Part(canopy, _RED),
    ]


def _flower() -> list[Part]:
    petals = [
        Part(_circle(0.42 * math.cos(a), -0.28 + 0.42 * math.sin(a), 0.3, n=14), (235, 110, 180))
        for a in np.linspace(-math.pi / 2, 3 * math.pi / 2, 5, endpoint=False)
    ]
    return [
        Part(_rect(-0.05, 0.1, 0.05, 1.0), _LEAF_GREEN, outline=False),
        *petals,
        Part(_circle(0.0, -0.28, 0.2, n=12), (250, 215, 40), outline=False),
    ]


def _leaf() -> list[Part]:
    x = np.linspace(-1.0, 0.85, 16)
    half = 0.45 * (1 - ((x + 0.075) / 0.925) ** 2) ** 0.7
    outline = np.concatenate([np.stack([x, -half], 1), np.stack([x[::-1], half[::-1]], 1)])
    return [
        Part(_rect(0.8, -0.04, 1.0, 0.04), (40, 110, 30), outline=False),
        Part(outline, (85, 175, 60)),
        Part(_rect(-0.85, -0.03, 0.8, 0.03), (40, 110, 30), outline=False),
    ]


def _egg() -> list[Part]:
    t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
    # Narrower at the top (sin < 0 is up) than at the bottom.
    rx = 0.62 * (1 + 0.15 * np.sin(t))
    pts = np.stack([rx * np.cos(t), 0.08 + 0.88 * np.sin(t)], axis=1)
    return [Part(pts, (245, 238, 220))]


def _carrot() -> list[Part]:
    green: RGB = (50, 150, 45)
    return [
        Part(_poly((-0.05, -0.55), (-0.35, -1.0), (0.05, -0.6)), green, outline=False),
        Part(_poly((-0.05, -0.55), (0.35, -1.0), (0.05, -0.6)), green, outline=False),
        Part(_poly((-0.06, -0.55), (0.0, -1.0), (0.06, -0.55)), green, outline=False),
        Part(_poly((-0.3, -0.6), (0.3, -0.6), (0.0, 1.0)), (240, 120, 30)),
    ]


def _rocket() -> list[Part]:
    fin: RGB = (210, 45, 40)
    return [
        Part(_poly((-0.12, 0.6), (0.12, 0.6), (0.0, 1.0)), (250, 160, 30), outline=False),
        Part(_poly((-0.3, 0.15), (-0.62, 0.72), (-0.3, 0.6)), fin),
        Part(_poly((0.3, 0.15), (0.62, 0.72), (0.3, 0.6)), fin),
        Part(_poly((-0.3, 0.62), (-0.3, -0.4), (0.0, -1.0), (0.3, -0.4), (0.3, 0.62)), _WHITE),
        Part(_circle(0.0, -0.15, 0.14, n=12), (60, 130, 220), outline=False),
    ]


def _shell() -> list[Part]:
    angles = np.linspace(math.radians(-160), math.radians(-20), 15)
    fan = np.concatenate(
        [_poly((0.0, 0.75)), np.stack([1.15 * np.cos(angles), 0.75 + 1.3 * np.sin(angles)], 1)]
    )
    ridges = []
    for a in np.linspace(math.radians(-145), math.radians(-35), 5):
        tip_x, tip_y = 1.1 * math.cos(a), 0.75 + 1.25 * math.sin(a)
        thin = _poly((0.0, 0.75), (tip_x - 0.04, tip_y), (tip_x + 0.04, tip_y))
        ridges.append(Part(thin, (200, 120, 110), outline=False))
    return [Part(fan, (245, 185, 165)), *ridges, Part(_rect(-0.2, 0.62, 0.2, 0.9), (220, 150, 130))]


# --------------------------------------------------------------------------
# World v2 classes.
# --------------------------------------------------------------------------

_SILVER: RGB = (185, 190, 200)
_CREAM: RGB = (240, 232, 205)
_FLAME: RGB = (250, 175, 30)


def _spoon() -> list[Part]:
    # Oval bowl on a handle; "fork" has the same handle and a head with tines.
    return [
        Part(_rect(-0.07, -0.2, 0.07, 0.95), _SILVER),
        Part(_ellipse(0.0, -0.55, 0.32, 0.42), _SILVER),
        Part(_ellipse(0.0, -0.5, 0.18, 0.26, n=16), (215, 220, 228), outline=False),
    ]


def _fork() -> list[Part]:
    tines = [Part(_rect(x - 0.045, -0.95, x + 0.045, -0.3), _SILVER) for x in (-0.26, 0.0, 0.26)]
    return [
        Part(_rect(-0.07, -0.2, 0.07, 0.95), _SILVER),
        *tines,
        Part(_poly((-0.31, -0.4), (0.31, -0.4), (0.14, -0.12), (-0.14, -0.12)), _SILVER),
    ]


def _plate() -> list[Part]:
    # A round plate seen at an angle: a white ellipse with a grey well.
    return [
        Part(_ellipse(0.0, 0.0, 0.98, 0.62), (246, 246, 250)),
        Part(_ellipse(0.0, 0.02, 0.62, 0.37), (210, 212, 222), outline=False),
    ]


def _bottle() -> list[Part]:
    glass: RGB = (50, 150, 85)
    return [
        Part(_rect(-0.15, -1.0, 0.15, -0.8), _RED, outline=False),
        Part(
            _poly(
                (-0.13, -0.82),
                (0.13, -0.82),
                (0.13, -0.45),
                (0.35, -0.2),
                (0.35, 0.95),
                (-0.35, 0.95),
                (-0.35, -0.2),
                (-0.13, -0.45),
            ),
            glass,
        ),
        Part(_rect(-0.35, 0.15, 0.35, 0.55), _CREAM, outline=False),
    ]


def _clock() -> list[Part]:
    return [
        Part(_circle(0.0, 0.0, 0.95), (200, 50, 50)),
        Part(_circle(0.0, 0.0, 0.76), (250, 250, 240), outline=False),
        Part(_rect(-0.05, -0.62, 0.05, 0.05), _DARK, outline=False),
        Part(_rotated(_rect(-0.05, -0.05, 0.45, 0.05), 25), _DARK, outline=False),
    ]


def _crab() -> list[Part]:
    red: RGB = (220, 75, 40)
    legs = [
        Part(_rotated(_rect(-0.04, 0.0, 0.04, 0.55), angle, 0.0, 0.0) + (x, 0.2), red, False)
        for x, angle in ((-0.45, 40), (-0.3, 25), (0.3, -25), (0.45, -40))
    ]
    return [
        *legs,
        Part(_poly((-0.4, 0.0), (-0.75, -0.35), (-0.6, -0.4), (-0.3, -0.05)), red, False),
        Part(_poly((0.4, 0.0), (0.75, -0.35), (0.6, -0.4), (0.3, -0.05)), red, False),
        Part(_circle(-0.72, -0.55, 0.24, n=14), red),
        Part(_circle(0.72, -0.55, 0.24, n=14), red),
        Part(_ellipse(0.0, 0.15, 0.62, 0.4), red),
        Part(_circle(-0.18, -0.12, 0.08, n=8), _DARK, outline=False),
        Part(_circle(0.18, -0.12, 0.08, n=8), _DARK, outline=False),
    ]


_CLOTH_BLUE: RGB = (55, 105, 215)


def _kite() -> list[Part]:
    # A blue diamond with a tail; "flag" is blue cloth on a pole: confusable pair.
    bows = [
        Part(
            _poly(
                (x - 0.12, y - 0.08),
                (x + 0.12, y + 0.08),
                (x + 0.12, y - 0.08),
                (x - 0.12, y + 0.08),
            ),
            _RED,
            outline=False,
        )
        for x, y in ((0.1, 0.62), (0.25, 0.85))
    ]
    return [
        Part(_poly((0.0, 0.45), (0.05, 0.45), (0.35, 1.0), (0.3, 1.0)), _DARK, outline=False),
        *bows,
        Part(_poly((0.0, -1.0), (0.6, -0.25), (0.0, 0.5), (-0.6, -0.25)), _CLOTH_BLUE),
        Part(_rect(-0.03, -0.95, 0.03, 0.45), (240, 220, 120), outline=False),
    ]


def _flag() -> list[Part]:
    return [
        Part(_rect(-0.82, -1.0, -0.7, 1.0), (120, 120, 125)),
        Part(_poly((-0.7, -0.95), (0.85, -0.85), (0.8, -0.1), (-0.7, -0.2)), _CLOTH_BLUE),
        Part(_poly((-0.7, -0.62), (0.83, -0.55), (0.82, -0.42), (-0.7, -0.49)), _WHITE, False),
    ]


def _bird() -> list[Part]:
    blue: RGB = (50, 85, 175)
    return [
        Part(_poly((0.45, 0.05), (1.0, -0.2), (0.95, 0.25)), blue),
        Part(_ellipse(0.05, 0.1, 0.6, 0.38), blue),
        Part(_circle(-0.55, -0.25, 0.3, n=16), blue),
        Part(_poly((-0.8, -0.32), (-1.0, -0.2), (-0.8, -0.15)), (245, 160, 30), outline=False),
        Part(_poly((-0.1, 0.0), (0.45, -0.05), (0.3, -0.6)), (80, 130, 215), outline=False),
        Part(_ellipse(-0.05, 0.25, 0.35, 0.18), (235, 110, 60), outline=False),
        Part(_circle(-0.6, -0.32, 0.06, n=8), _DARK, outline=False),
    ]


def _tent() -> list[Part]:
    return [
        Part(_poly((-1.0, 0.85), (0.0, -0.85), (1.0, 0.85)), (235, 130, 40)),
        Part(_poly((-0.3, 0.85), (0.0, 0.05), (0.3, 0.85)), (90, 45, 20), outline=False),
        Part(_rect(-0.04, -1.0, 0.04, -0.75), (90, 60, 30), outline=False),
    ]


def _lamp() -> list[Part]:
    # A floor lamp: yellow shade on a dark pole with a round base.
    return [
        Part(_rect(-0.05, -0.3, 0.05, 0.85), _DARK, outline=False),
        Part(_ellipse(0.0, 0.88, 0.45, 0.12, n=16), _DARK),
        Part(_poly((-0.3, -0.95), (0.3, -0.95), (0.58, -0.3), (-0.58, -0.3)), (245, 215, 110)),
    ]


def _anchor() -> list[Part]:
    iron: RGB = (70, 80, 105)
    return [
        Part(_band(0.0, -0.78, 0.22, 0.22, 0.1, 0.1, 0.0, 2 * math.pi, n=18), iron),
        Part(_rect(-0.08, -0.6, 0.08, 0.9), iron),
        Part(_rect(-0.45, -0.45, 0.45, -0.32), iron),
        Part(_band(0.0, 0.3, 0.8, 0.65, 0.66, 0.51, 0.15, math.pi - 0.15, n=20), iron),
        Part(_poly((-0.9, 0.35), (-0.58, 0.2), (-0.72, 0.55)), iron),
        Part(_poly((0.9, 0.35), (0.58, 0.2), (0.72, 0.55)), iron),
    ]


def _balloon() -> list[Part]:
    # A blue oval on a string: confusable with the blue "ball".
    return [
        Part(_poly((0.0, 0.45), (0.04, 0.45), (0.2, 1.0), (0.15, 1.0)), _DARK, outline=False),
        Part(_poly((-0.1, 0.55), (0.1, 0.55), (0.0, 0.4)), (35, 75, 190), outline=False),
        Part(_ellipse(0.0, -0.25, 0.6, 0.72), (45, 95, 220)),
        Part(_ellipse(-0.25, -0.55, 0.1, 0.18, n=12), (150, 185, 245), outline=False),
    ]


def _candle() -> list[Part]:
    return [
        Part(_rect(-0.24, -0.3, 0.24, 0.95), _CREAM),
        Part(_rect(-0.02, -0.45, 0.02, -0.28), _DARK, outline=False),
        Part(_ellipse(0.0, -0.68, 0.13, 0.28, n=14), _FLAME, outline=False),
        Part(_ellipse(0.0, -0.6, 0.06, 0.13, n=10), (255, 240, 150), outline=False),
    ]


def _gift() -> list[Part]:
    # A red box with a gold ribbon; "book" is a dark red cover: confusable pair.
    return [
        Part(_rect(-0.75, -0.25, 0.75, 0.9), (215, 40, 60)),
        Part(_rect(-0.85, -0.45, 0.85, -0.2), (225, 50, 70)),
        Part(_rect(-0.1, -0.45, 0.1, 0.9), _GOLD, outline=False),
        Part(_poly((0.0, -0.45), (-0.5, -0.85), (-0.45, -0.45)), _GOLD),
        Part(_poly((0.0, -0.45), (0.5, -0.85), (0.45, -0.45)), _GOLD),
    ]


def _book() -> list[Part]:
    return [
        Part(_rect(-0.6, -0.92, 0.7, 0.92), _WHITE),
        Part(_rect(-0.7, -0.95, 0.6, 0.95), (165, 35, 50)),
        Part(_rect(-0.7, -0.95, -0.52, 0.95), (120, 25, 35), outline=False),
        Part(_rect(-0.3, -0.55, 0.4, -0.35), _GOLD, outline=False),
    ]


def _hat() -> list[Part]:
    straw: RGB = (215, 180, 100)
    return [
        Part(_ellipse(0.0, 0.45, 1.0, 0.28), straw),
        Part(_poly((-0.55, 0.45), (-0.45, -0.45), (0.45, -0.45), (0.55, 0.45)), straw),
        Part(_ellipse(0.0, -0.45, 0.45, 0.15, n=16), straw, outline=False),
        Part(_rect(-0.53, 0.12, 0.53, 0.3), _RED, outline=False),
    ]


def _heart() -> list[Part]:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [Part(np.stack([x, y + 2.5], 1) / 17.0, (225, 40, 95))]


def _pencil() -> list[Part]:
    return [
        Part(_rect(-1.0, -0.14, -0.78, 0.14), (240, 140, 160)),
        Part(_rect(-0.8, -0.14, -0.62, 0.14), _SILVER, outline=False),
        Part(_rect(-0.62, -0.14, 0.5, 0.14), (245, 200, 40)),
        Part(_poly((0.5, -0.14), (1.0, 0.0), (0.5, 0.14)), (230, 190, 140)),
        Part(_poly((0.82, -0.05), (1.0, 0.0), (0.82, 0.05)), _DARK, outline=False),
    ]


def _bucket() -> list[Part]:
    return [
        Part(_band(0.0, -0.4, 0.7, 0.55, 0.6, 0.46, math.pi, 2 * math.pi, n=16), _DARK, False),
        Part(_poly((-0.72, -0.4), (0.72, -0.4), (0.52, 0.88), (-0.52, 0.88)), (235, 85, 50)),
        Part(_rect(-0.7, -0.3, 0.7, -0.18), (250, 200, 60), outline=False),
    ]


def _cloud() -> list[Part]:
    white: RGB = (236, 241, 250)
    puffs = ((-0.55, 0.2, 0.38), (0.0, -0.12, 0.55), (0.55, 0.15, 0.4), (0.2, 0.3, 0.38))
    # Outlined puffs, then the same puffs slightly shrunk without outline: only the outer
    # edge of the union keeps its dark line.
    return [
        *[Part(_circle(x, y, r, n=18), white) for x, y, r in puffs],
        *[Part(_circle(x, y, r - 0.06, n=18), white, outline=False) for x, y, r in puffs],
    ]


def _cake() -> list[Part]:
    return [
        Part(_rect(-0.85, 0.0, 0.85, 0.85), (225, 175, 120)),
        Part(_rect(-0.85, -0.2, 0.85, 0.08), (245, 150, 190)),
        *[
            Part(_circle(x, 0.08, 0.1, n=10), (245, 150, 190), outline=False)
            for x in (-0.6, -0.2, 0.2, 0.6)
        ],
        Part(_rect(-0.07, -0.6, 0.07, -0.2), (120, 180, 240), outline=False),
        Part(_ellipse(0.0, -0.75, 0.09, 0.16, n=10), _FLAME, outline=False),
    ]


@dataclass(frozen=True)
class ObjectClass:
    """A drawable object class.

    Attributes:
        name: Single lowercase word.
        draw: Returns the parts of the shape in the local frame.
        max_rotation: Largest rotation in degrees either way; upright things
            (house, tree, cup) only tilt a little, round things spin freely.
    """

    name: str
    draw: Callable[[], list[Part]]
    max_rotation: float


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("apple", _apple, 30),
    ObjectClass("orange", _orange, 30),
    ObjectClass("ball", _ball, 180),
    ObjectClass("planet", _planet, 35),
    ObjectClass("sun", _sun, 180),
    ObjectClass("star", _star_shape, 180),
    ObjectClass("starfish", _starfish, 180),
    ObjectClass("moon", _moon, 35),
    ObjectClass("banana", _banana, 35),
    ObjectClass("house", _house, 12),
    ObjectClass("tree", _tree, 12),
    ObjectClass("car", _car, 15),
    ObjectClass("bus", _bus, 15),
    ObjectClass("fish", _fish, 40),
    ObjectClass("boat", _boat, 15),
    ObjectClass("cup", _cup, 15),
    ObjectClass("key", _key, 180),
    ObjectClass("bell", _bell, 25),
    ObjectClass("mushroom", _mushroom, 15),
    ObjectClass("umbrella", _umbrella, 25),
    ObjectClass("flower", _flower, 20),
    ObjectClass("leaf", _leaf, 180),
    ObjectClass("egg", _egg, 30),
    ObjectClass("carrot", _carrot, 60),
    ObjectClass("rocket", _rocket, 40),
    ObjectClass("shell", _shell, 30),
    # World v2.
    ObjectClass("spoon", _spoon, 180),
    ObjectClass("fork", _fork, 180),
    ObjectClass("plate", _plate, 10),
    ObjectClass("bottle", _bottle, 20),
    ObjectClass("clock", _clock, 15),
    ObjectClass("crab", _crab, 20),
    ObjectClass("kite", _kite, 30),
    ObjectClass("flag", _flag, 15),
    ObjectClass("bird", _bird, 25),
    ObjectClass("tent", _tent, 8),
    ObjectClass("lamp", _lamp, 10),
    ObjectClass("anchor", _anchor, 25),
    ObjectClass("balloon", _balloon, 25),
    ObjectClass("candle", _candle, 12),
    ObjectClass("gift", _gift, 15),
    ObjectClass("book", _book, 25),
    ObjectClass("hat", _hat, 20),
    ObjectClass("heart", _heart, 30),
    ObjectClass("pencil", _pencil, 180),
    ObjectClass("bucket", _bucket, 15),
    ObjectClass("cloud", _cloud, 10),
    ObjectClass("cake", _cake, 10),
)

#: All class names in the world's fixed order (the order of classes.txt).
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_BY_NAME: dict[str, ObjectClass] = {c.name: c for c in CLASSES}
#: Parts do not depend on the sample, so they are built once per process.
PARTS: dict[str, list[Part]] = {c.name: c.draw() for c in CLASSES}

#: Deliberately confusable class pairs (similar shape and/or colour).
CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("apple", "orange"),  # round fruit with a leaf; red vs orange
    ("star", "starfish"),  # five-pointed; yellow thin vs coral fat arms
    ("moon", "banana"),  # crescent; pale thick vs yellow thin with tips
    ("car", "bus"),  # body on two wheels; red with cabin vs long yellow box
    ("mushroom", "umbrella"),  # red dome; white dots + stem vs scallops + handle
    ("balloon", "ball"),  # blue round; oval on a string vs circle with a band
    ("kite", "flag"),  # blue cloth; diamond with a tail vs rectangle on a pole
    ("spoon", "fork"),  # silver utensil; oval bowl vs tines
    ("gift", "book"),  # red rectangle; gold ribbon and bow vs spine and title
)


def _check_classes() -> None:
    """Fail at import if the class table drifts out of its contract."""
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) >= 44
    for name in CLASS_NAMES:
        assert re.fullmatch(r"[a-z]+", name), name
    for a, b in CONFUSABLE_PAIRS:
        assert a in CLASS_BY_NAME and b in CLASS_BY_NAME and a != b


_check_classes()
