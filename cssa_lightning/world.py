"""A procedural miniature "world": a synthetic multi-label image data set.

No real images or weights can be downloaded, so the project draws its own:
each image is a scene (kitchen, beach, ...) with its own background style and
1-5 procedurally drawn objects. Objects are recognisable by shape and colour,
drawn with random position, scale, rotation, mirroring, colour jitter, partial
occlusion and pixel noise. Within a scene classes follow Zipf-like weights
(long tail), some classes live in several scenes, about 12% of objects are out
of their scene, and a few class pairs are deliberately confusable (see
``CONFUSABLE_PAIRS``).

Generation is split in two so tests can check statistics cheaply:

* :func:`sample_image_spec` draws an :class:`ImageSpec` (what is where) from a
  random generator, without any pixels;
* :func:`render_image` turns a spec into a PIL image.

Worlds are written in the project's user data format::

    <folder>/
        images/000000.png ...
        metadata.jsonl   # {"file_name": "images/000000.png",
                         #  "labels": ["apple", "cup"], "scene": "kitchen"}
        classes.txt      # all of CLASS_NAMES, one per line, in order

The ``pretrain`` split's metadata lines also carry ``"caption"`` (one string)
and ``"captions"`` (a list of :data:`NUM_PRETRAIN_CAPTIONS` different captions
for the same image, the first equal to ``"caption"``), so CLIP pre-training can
pick a different phrasing per epoch. :func:`make_caption` can also be called
directly with an image's labels and scene for fresh captions.

Command line::

    python -m cssa_lightning.world --root DIR --split train --num-images N \\
        --seed S --image-size 64
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Split = Literal["pretrain", "train", "test"]
SPLITS: tuple[str, ...] = ("pretrain", "train", "test")

RGB = tuple[int, int, int]

# Probability that an object ignores its scene and is drawn uniformly from the
# classes that do NOT belong to the scene (so every such draw really is out of
# scene and the measured fraction equals this number).
OUT_OF_SCENE_PROB = 0.12
# Probability of 1, 2, 3, 4, 5 objects being attempted per image.
NUM_OBJECTS_PROBS = (0.3, 0.3, 0.2, 0.12, 0.08)
# Exponent of the Zipf-like class weights inside a scene (rank r gets 1/r^s).
ZIPF_EXPONENT = 1.2
# Probability that an image gets an extra occluder (a bar of scene colour).
OCCLUDER_PROB = 0.3
# Objects are drawn at this multiple of the final size and box-downsampled,
# which gives cheap anti-aliasing.
SUPERSAMPLE = 2
NUM_PRETRAIN_CAPTIONS = 5

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


_CLASSES: tuple[ObjectClass, ...] = (
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
)

#: All class names in the world's fixed order (the order of classes.txt).
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in _CLASSES)
_CLASS_BY_NAME = {c.name: c for c in _CLASSES}
# Parts do not depend on the sample, so build them once per process.
_PARTS: dict[str, list[Part]] = {c.name: c.draw() for c in _CLASSES}

#: Deliberately confusable class pairs (similar shape and/or colour).
CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("apple", "orange"),  # round fruit with a leaf; red vs orange
    ("star", "starfish"),  # five-pointed; yellow thin vs coral fat arms
    ("moon", "banana"),  # crescent; pale thick vs yellow thin with tips
    ("car", "bus"),  # body on two wheels; red with cabin vs long yellow box
    ("mushroom", "umbrella"),  # red dome; white dots + stem vs scallops + handle
)


@dataclass(frozen=True)
class Scene:
    """A scene context.

    Attributes:
        name: Single lowercase word.
        classes: Classes that co-occur here, most frequent first (Zipf rank).
        style: Background style, one of "tiles", "horizon", "blotches",
            "stripes", "dots", "rows".
        palette: Background base colours (meaning depends on the style).
        preposition: How captions place objects here ("in the kitchen",
            "on the beach", "in space").
    """

    name: str
    classes: tuple[str, ...]
    style: str
    palette: tuple[RGB, ...]
    preposition: str


#: Scene definitions in fixed order.
SCENES: tuple[Scene, ...] = (
    Scene(
        "kitchen",
        ("cup", "apple", "egg", "banana", "orange", "carrot", "key", "bell"),
        "tiles",
        ((200, 172, 135), (165, 135, 105)),
        "in the",
    ),
    Scene(
        "beach",
        ("sun", "ball", "fish", "umbrella", "boat", "starfish", "shell", "banana"),
        "horizon",
        ((120, 185, 235), (225, 205, 150)),
        "on the",
    ),
    Scene(
        "forest",
        ("tree", "leaf", "mushroom", "flower", "apple", "house", "moon"),
        "blotches",
        ((70, 90, 55), (115, 105, 65)),
        "in the",
    ),
    Scene(
        "street",
        ("car", "house", "bus", "key", "tree", "umbrella", "ball", "bell"),
        "stripes",
        ((110, 110, 115), (150, 150, 150)),
        "on the",
    ),
    Scene(
        "space",
        ("star", "moon", "planet", "rocket", "sun"),
        "dots",
        ((15, 15, 40), (40, 25, 70)),
        "in",
    ),
    Scene(
        "farm",
        ("egg", "tree", "carrot", "house", "flower", "apple", "bell", "car"),
        "rows",
        ((150, 185, 80), (190, 170, 90)),
        "on the",
    ),
)
SCENE_NAMES: tuple[str, ...] = tuple(s.name for s in SCENES)
_SCENE_BY_NAME = {s.name: s for s in SCENES}


def _check_world_definition() -> None:
    """Fail at import if the constants drift out of their contract."""
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) >= 20
    assert len(SCENES) >= 5
    for word in (*CLASS_NAMES, *SCENE_NAMES):
        assert re.fullmatch(r"[a-z]+", word), word
    for scene in SCENES:
        assert set(scene.classes) <= set(CLASS_NAMES), scene.name
    assert set().union(*(s.classes for s in SCENES)) == set(CLASS_NAMES)


_check_world_definition()

# --------------------------------------------------------------------------
# Specs: what is where, without pixels.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object to draw.

    Attributes:
        name: Class name.
        x: Centre x as a fraction of the image width.
        y: Centre y as a fraction of the image height.
        radius: Half the object's extent as a fraction of the image size.
        rotation: Degrees, clockwise on screen.
        flip: Mirror left-right before rotating.
        brightness: Multiplies every colour of the object.
        tint: Added to every colour of the object (per channel).
        in_scene: Whether the class was drawn from the scene's classes.
    """

    name: str
    x: float
    y: float
    radius: float
    rotation: float
    flip: bool
    brightness: float
    tint: tuple[float, float, float]
    in_scene: bool


@dataclass(frozen=True)
class OccluderSpec:
    """A bar in scene colour covering one side of an object.

    Attributes:
        target: Index of the object it covers part of.
        angle: Direction (degrees) from the object centre towards the bar.
        offset: Distance from the object centre to the bar's near edge, in
            object radii (0.3 covers roughly a third of the object).
        color_index: Which scene palette colour the bar takes.
    """

    target: int
    angle: float
    offset: float
    color_index: int


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image.

    Attributes:
        scene: Scene name.
        objects: Objects in drawing order (later ones are on top).
        occluder: Optional bar that hides part of one object.
        noise_std: Standard deviation of the Gaussian pixel noise (0-255 scale).
        seed: Seeds the background texture and the pixel noise.
    """

    scene: str
    objects: tuple[ObjectSpec, ...]
    occluder: OccluderSpec | None
    noise_std: float
    seed: int

    @property
    def labels(self) -> list[str]:
        """Unique class names present, in CLASS_NAMES order."""
        present = {o.name for o in self.objects}
        return [name for name in CLASS_NAMES if name in present]


def _zipf_weights(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT
    return w / w.sum()


# Object radius range (fraction of image size) by number of objects: crowded
# images need smaller objects so they fit without hiding each other.
_RADIUS_RANGE = {1: (0.22, 0.34), 2: (0.18, 0.27), 3: (0.16, 0.23), 4: (0.14, 0.2), 5: (0.14, 0.19)}
# Two objects' centres must be at least this fraction of the sum of their
# radii apart, so overlap is partial and every labelled object stays visible.
_MIN_CENTRE_GAP = 0.72


def sample_image_spec(rng: np.random.Generator) -> ImageSpec:
    """Draw what one image shows, without rendering it.

    Args:
        rng: Random generator; the spec is a pure function of its state.

    Returns:
        The image spec. It has 1-5 objects; an object whose placement keeps
        failing is dropped rather than allowed to hide another one.
    """
    scene = SCENES[int(rng.integers(len(SCENES)))]
    weights = _zipf_weights(len(scene.classes))
    outside = [c for c in CLASS_NAMES if c not in scene.classes]
    n = int(rng.choice(len(NUM_OBJECTS_PROBS), p=NUM_OBJECTS_PROBS)) + 1
    lo, hi = _RADIUS_RANGE[n]

    objects: list[ObjectSpec] = []
    for _ in range(n):
        in_scene = bool(rng.random() >= OUT_OF_SCENE_PROB)
        if in_scene:
            name = scene.classes[int(rng.choice(len(scene.classes), p=weights))]
        else:
            name = outside[int(rng.integers(len(outside)))]
        radius = float(rng.uniform(lo, hi))
        # Centres may sit close to the border so some objects are cropped
        # (up to ~35% of their radius), another form of partial occlusion.
        margin = 0.65 * radius
        for _attempt in range(25):
            x, y = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
            if all(
                math.hypot(x - o.x, y - o.y) >= _MIN_CENTRE_GAP * (radius + o.radius)
                for o in objects
            ):
                break
        else:
            continue
        max_rot = _CLASS_BY_NAME[name].max_rotation
        tint = rng.normal(0.0, 9.0, size=3).tolist()
        objects.append(
            ObjectSpec(
                name=name,
                x=x,
                y=y,
                radius=radius,
                rotation=float(rng.uniform(-max_rot, max_rot)),
                flip=bool(rng.random() < 0.5),
                brightness=float(rng.uniform(0.85, 1.12)),
                tint=(tint[0], tint[1], tint[2]),
                in_scene=in_scene,
            )
        )

    occluder = None
    if rng.random() < OCCLUDER_PROB:
        occluder = OccluderSpec(
            target=int(rng.integers(len(objects))),
            angle=float(rng.uniform(0, 360)),
            offset=float(rng.uniform(0.25, 0.6)),
            color_index=int(rng.integers(len(scene.palette))),
        )
    return ImageSpec(
        scene=scene.name,
        objects=tuple(objects),
        occluder=occluder,
        noise_std=float(rng.uniform(2.0, 12.0)),
        seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------


def _jitter_colors(palette: Sequence[RGB], rng: np.random.Generator, amount: float) -> np.ndarray:
    base = np.asarray(palette, dtype=np.float32)
    return np.clip(base + rng.normal(0.0, amount, size=base.shape), 0, 255)


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float32 background in the scene's style."""
    c0, c1 = _jitter_colors(scene.palette, rng, 12.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if scene.style == "tiles":
        # Checkerboard floor tiles.
        tile = rng.uniform(0.12, 0.22)
        mask = ((np.floor(xx / tile) + np.floor(yy / tile)) % 2).astype(np.float32)
    elif scene.style == "horizon":
        # Sky above, sand below; both with a soft vertical gradient.
        horizon = rng.uniform(0.35, 0.6)
        mask = (yy > horizon).astype(np.float32)
        img = c0 * (1 - mask[..., None]) + c1 * mask[..., None]
        return img * (0.85 + 0.25 * yy[..., None])
    elif scene.style == "blotches":
        # Low-resolution noise upsampled into soft leafy blotches.
        coarse = rng.random((6, 6)).astype(np.float32)
        mask = (
            np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                    (size, size), Image.Resampling.BILINEAR
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        mask = mask * (0.7 + 0.3 * yy)
    elif scene.style == "stripes":
        # Diagonal road markings.
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.2, 0.35)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        mask = ((u / period) % 1.0 < 0.3).astype(np.float32)
    elif scene.style == "dots":
        # Dark sky gradient with tiny stars.
        img = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
        count = int(rng.integers(size // 4, size // 2))
        ys, xs = rng.integers(0, size, size=(2, count))
        img[ys, xs] = rng.uniform(170, 255, size=(count, 1))
        return img
    elif scene.style == "rows":
        # Gently wavy field rows.
        period = rng.uniform(0.1, 0.18)
        wave = 0.04 * np.sin(xx * 2 * math.pi * rng.uniform(0.5, 1.5))
        mask = 0.5 + 0.5 * np.sin(2 * math.pi * (yy + wave) / period)
    else:  # pragma: no cover - guarded by the definitions above
        raise ValueError(f"unknown style {scene.style!r}")
    return c0 * (1 - mask[..., None]) + c1 * mask[..., None]


# A polygon ready for ImageDraw: pixel points, fill colour, outline colour.
_PixelPolygon = tuple[list[tuple[float, float]], RGB, RGB | None]


def _to_rgb(color: np.ndarray) -> RGB:
    return (int(color[0]), int(color[1]), int(color[2]))


def _object_polygons(spec: ObjectSpec, size: int) -> list[_PixelPolygon]:
    """Transform an object's parts to pixel polygons with jittered colours."""
    a = math.radians(spec.rotation)
    c, s = math.cos(a), math.sin(a)
    scale = spec.radius * size
    flip = -1.0 if spec.flip else 1.0
    matrix = np.array([[flip * c * scale, flip * s * scale], [-s * scale, c * scale]])
    offset = np.array([spec.x * size, spec.y * size])
    tint = np.asarray(spec.tint)
    out: list[_PixelPolygon] = []
    for part in _PARTS[spec.name]:
        pts = part.points @ matrix + offset
        fill = np.clip(np.asarray(part.color) * spec.brightness + tint, 0, 255)
        # A darker outline separates objects from similar backgrounds and
        # from each other, as real object edges do.
        line = _to_rgb(fill * 0.45) if part.outline else None
        out.append(([(x, y) for x, y in pts.tolist()], _to_rgb(fill), line))
    return out


def render_image(spec: ImageSpec, image_size: int = 64) -> Image.Image:
    """Render an image spec.

    Args:
        spec: What to draw (from :func:`sample_image_spec`).
        image_size: Width and height in pixels.

    Returns:
        An RGB image of ``image_size`` x ``image_size`` pixels.

    Raises:
        ValueError: If ``image_size`` is smaller than 16.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    rng = np.random.default_rng(spec.seed)
    scene = _SCENE_BY_NAME[spec.scene]
    background = _background(scene, image_size, rng)
    big = image_size * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).resize(
        (big, big), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(canvas)
    for obj in spec.objects:
        for pts, fill, line in _object_polygons(obj, big):
            if line is None:
                draw.polygon(pts, fill=fill)
            else:
                draw.polygon(pts, fill=fill, outline=line, width=SUPERSAMPLE)

    if spec.occluder is not None:
        occ = spec.occluder
        target = spec.objects[occ.target]
        # A bar whose near edge is `offset` radii from the object centre, on
        # the side given by `angle`, just long and wide enough to hide that
        # side of the object, so it cannot hide a whole neighbour.
        r = target.radius * big
        local = _rect(occ.offset * r, -1.1 * r, 1.25 * r, 1.1 * r)
        pts = _rotated(local, occ.angle) + (target.x * big, target.y * big)
        color = _jitter_colors(scene.palette[occ.color_index : occ.color_index + 1], rng, 15.0)[0]
        draw.polygon([(x, y) for x, y in pts.tolist()], fill=_to_rgb(color * 0.9))

    small = canvas.reduce(SUPERSAMPLE)
    pixels = np.asarray(small, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, spec.noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------

# Every word a caption or a class prompt may contain besides class and scene
# names. Keep it in sync with the templates below (a test checks it).
TEMPLATE_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "with", "of", "in", "on", "next", "to",
    "photo", "picture", "image", "scene", "there", "is", "are", "some",
    "this", "shows", "things",
)  # fmt: skip


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _join(words: Sequence[str], rng: np.random.Generator) -> str:
    if len(words) == 1:
        return words[0]
    if rng.random() < 0.5:
        return ", ".join(words[:-1]) + " and " + words[-1]
    return " and ".join(words)


def make_caption(labels: Sequence[str], scene: str, rng: np.random.Generator) -> str:
    """A short varied caption naming every label and often the scene.

    Args:
        labels: Class names present (at least one).
        scene: Scene name.
        rng: Random generator choosing order and phrasing.

    Returns:
        A caption such as "a kitchen with an apple and a cup", "cup, apple" or
        "a photo of a cup next to an apple in the kitchen".

    Raises:
        ValueError: If ``labels`` is empty or a name is unknown.
    """
    if not labels:
        raise ValueError("labels must not be empty")
    unknown = [n for n in labels if n not in _CLASS_BY_NAME]
    if unknown:
        raise ValueError(f"labels has unknown class names {unknown}")
    if scene not in _SCENE_BY_NAME:
        raise ValueError(f"scene {scene!r} is unknown")
    names = [str(n) for n in rng.permutation(list(labels))]
    bare = _join(names, rng)
    with_articles = _join([_article(n) for n in names], rng)
    where = f"{_SCENE_BY_NAME[scene].preposition} {scene}"
    if len(names) >= 2 and rng.random() < 0.5:
        rest = _join([_article(n) for n in names[1:]], rng)
        with_articles = f"{_article(names[0])} next to {rest}"
    templates = (
        f"{bare}",
        f"{', '.join(names)}",
        f"a photo of {with_articles}",
        f"a picture of {with_articles} {where}",
        f"a photo of {with_articles} {where}",
        f"{with_articles} {where}",
        f"a {scene} with {with_articles}",
        f"a {scene} scene with {bare}",
        f"{scene}: {bare}",
        f"an image of {with_articles}",
        f"this photo shows {with_articles}",
        f"there {'is' if len(names) == 1 else 'are'} {with_articles} {where}",
        f"some things {where}: {bare}",
    )
    return templates[int(rng.integers(len(templates)))]


def split_words(text: str) -> list[str]:
    """Lowercase words of a caption or prompt, punctuation stripped."""
    return re.findall(r"[a-z]+", text.lower())


def vocabulary() -> list[str]:
    """Every word a caption or a prompt like "a photo of a {name}." can hold.

    Returns:
        Sorted unique lowercase words: template words, class names and scene
        names.
    """
    return sorted({*TEMPLATE_WORDS, *CLASS_NAMES, *SCENE_NAMES})


# --------------------------------------------------------------------------
# Writing worlds to disk.
# --------------------------------------------------------------------------


def _split_code(split: str) -> int:
    # A stable per-split number (Python's hash() is salted per process).
    return zlib.crc32(split.encode())


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image of one split.

    Every image has its own stream so images can be made in any order or
    process and the result is the same; streams of different splits are
    independent, so the pretrain split is disjoint from train and test.
    """
    return np.random.default_rng([seed, _split_code(split), index])


def _check_args(split: str, num_images: int, image_size: int, seed: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def world_dir_name(split: str, num_images: int, image_size: int = 64, seed: int = 0) -> str:
    """Folder name of a world: ``<split>-<num_images>-<image_size>-s<seed>``."""
    return f"{split}-{num_images}-{image_size}-s{seed}"


def _make_one(args: tuple[Path, str, int, int, int]) -> str:
    """Render and save image ``index``; return its metadata line."""
    out_dir, split, index, image_size, seed = args
    rng = image_rng(seed, split, index)
    spec = sample_image_spec(rng)
    file_name = f"images/{index:06d}.png"
    render_image(spec, image_size).save(out_dir / file_name)
    record: dict[str, object] = {"file_name": file_name, "labels": spec.labels, "scene": spec.scene}
    if split == "pretrain":
        captions = [
            make_caption(spec.labels, spec.scene, rng) for _ in range(NUM_PRETRAIN_CAPTIONS)
        ]
        record["caption"] = captions[0]
        record["captions"] = captions
    return json.dumps(record)


def generate_world(
    out_dir: Path,
    split: Split,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
) -> None:
    """Write a world into ``out_dir`` (which must not hold one already).

    Most callers want :func:`ensure_world`, which also caches and never
    leaves a half-written folder.

    Args:
        out_dir: Folder to fill; created if missing.
        split: Which split's random stream to use.
        num_images: How many images.
        image_size: Width and height in pixels.
        seed: Base seed.
        workers: Processes to use; default is up to 2, and 1 for small worlds
            where starting processes costs more than it saves.

    Raises:
        ValueError: On a bad argument.
    """
    _check_args(split, num_images, image_size, seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = 1 if num_images < 500 else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    jobs = [(out_dir, split, i, image_size, seed) for i in range(num_images)]
    if workers == 1:
        lines = [_make_one(job) for job in jobs]
    else:
        # Fork where it exists: workers then skip re-importing the package
        # (which pulls in torch and transformers) and start instantly.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers) as pool:
            lines = pool.map(_make_one, jobs, chunksize=64)
    (out_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (out_dir / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")


def _is_complete(folder: Path) -> bool:
    return (folder / "metadata.jsonl").is_file() and (folder / "classes.txt").is_file()


def ensure_world(
    root: Path,
    split: Split,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Return the folder of a world, generating it first if needed.

    The world is written to a temporary folder under ``root`` and renamed into
    place when complete, so an interrupted run never leaves a half world.

    Args:
        root: Parent folder of all worlds.
        split: "pretrain", "train" or "test"; each has its own random stream.
        num_images: How many images.
        image_size: Width and height in pixels.
        seed: Base seed; the same arguments always give byte-identical files.

    Returns:
        ``root / "<split>-<num_images>-<image_size>-s<seed>"``.

    Raises:
        ValueError: On a bad argument.
    """
    _check_args(split, num_images, image_size, seed)
    root = Path(root)
    final = root / world_dir_name(split, num_images, image_size, seed)
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        generate_world(tmp, split, num_images, image_size, seed)
        if final.exists() and not _is_complete(final):
            # Not produced by this code (rename is atomic); start over.
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:
            # Another process finished the same world first.
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: generate (or find) one world."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="parent folder of worlds")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        folder = ensure_world(args.root, args.split, args.num_images, args.image_size, args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(folder)
    print(f"took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
