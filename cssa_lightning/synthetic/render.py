"""Rendering: backgrounds and :func:`render_image`, which turns an image spec into pixels.

Everything random here comes from ``np.random.default_rng(spec.seed)``, so an image is a pure
function of its spec and size.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from cssa_lightning.synthetic.contexts import CONTEXT_BY_NAME
from cssa_lightning.synthetic.shapes import PARTS, RGB, _rect, _rotated

if TYPE_CHECKING:
    from cssa_lightning.synthetic.world import ImageSpec, ObjectSpec

# Objects are drawn at this multiple of the final size and box-downsampled, which gives cheap
# anti-aliasing.
SUPERSAMPLE = 2


def _jitter_colors(palette: Sequence[RGB], rng: np.random.Generator, amount: float) -> np.ndarray:
    base = np.asarray(palette, dtype=np.float32)
    return np.clip(base + rng.normal(0.0, amount, size=base.shape), 0, 255)


def _random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]):
    """An RGB colour (float32, 0-255) of uniformly random hue."""
    hue, s, v = rng.random(), rng.uniform(*sat), rng.uniform(*val)
    return np.asarray(colorsys.hsv_to_rgb(hue, s, v), dtype=np.float32) * 255


def _upsampled_noise(cells: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small (h, w[, 3]) uint8-range array to (size, size[, 3])."""
    image = Image.fromarray(np.clip(cells, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _blend(c0: np.ndarray, c1: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return c0 * (1 - mask[..., None]) + c1 * mask[..., None]


def _neutral_background(style: str, size: int, rng: np.random.Generator):
    """A context-free background: its colours are random, whatever the image's context."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if style == "gradient":
        # A plain colour of random hue, gently lighter or darker towards a random side.
        c0 = _random_color(rng, (0.1, 0.55), (0.45, 0.92))
        c1 = np.clip(c0 * rng.uniform(0.75, 1.2), 0, 255)
        angle = rng.uniform(0, 2 * math.pi)
        u = (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)
        return _blend(c0, c1, np.clip(u + 0.5, 0, 1)), np.stack([c0, c1])
    if style == "noise":
        # Low-frequency coloured noise around a random colour.
        c0 = _random_color(rng, (0.1, 0.5), (0.45, 0.88))
        cells = int(rng.integers(3, 6))
        grid = c0 + rng.normal(0.0, 28.0, size=(cells, cells, 3))
        img = _upsampled_noise(grid, size)
        return img, np.stack([c0, img.reshape(-1, 3).mean(0)])
    if style == "grid":
        # A soft grey grid on light grey.
        c0 = np.full(3, rng.uniform(150, 215), dtype=np.float32) + rng.normal(0, 4, 3)
        c1 = c0 - rng.uniform(18, 35)
        period = rng.uniform(0.12, 0.25)
        phase = rng.uniform(0, period, size=2)
        width = 0.14 * period
        lines = (((xx + phase[0]) % period) < width) | (((yy + phase[1]) % period) < width)
        return _blend(c0, c1, lines.astype(np.float32)), np.stack([c0, c1])
    if style == "diagonal":
        # Light diagonal stripes of a random colour.
        c0 = _random_color(rng, (0.05, 0.35), (0.7, 0.95))
        c1 = np.clip(c0 * rng.uniform(0.82, 0.93), 0, 255)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.15, 0.3)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        return _blend(c0, c1, ((u / period) % 1.0 < 0.5).astype(np.float32)), np.stack([c0, c1])
    raise ValueError(f"unknown neutral style {style!r}")


def _context_background(context_name: str, size: int, rng: np.random.Generator):
    """A background in the context's own style (v1 scene styles plus party and study)."""
    context = CONTEXT_BY_NAME[context_name]
    c0, c1 = _jitter_colors(context.palette, rng, 12.0)
    colors = np.stack([c0, c1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    style = context.style
    if style == "tiles":  # checkerboard floor tiles
        tile = rng.uniform(0.12, 0.22)
        mask = ((np.floor(xx / tile) + np.floor(yy / tile)) % 2).astype(np.float32)
    elif style == "horizon":  # sky above, sand below, soft vertical gradient
        mask = (yy > rng.uniform(0.35, 0.6)).astype(np.float32)
        return _blend(c0, c1, mask) * (0.85 + 0.25 * yy[..., None]), colors
    elif style == "blotches":  # low-resolution noise upsampled into leafy blotches
        mask = _upsampled_noise(rng.random((6, 6)) * 255, size) / 255.0
        mask = mask * (0.7 + 0.3 * yy)
    elif style == "stripes":  # diagonal road markings
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.2, 0.35)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        mask = ((u / period) % 1.0 < 0.3).astype(np.float32)
    elif style == "dots":  # dark sky gradient with tiny stars
        img = _blend(c0, c1, yy)
        count = int(rng.integers(size // 4, size // 2))
        ys, xs = rng.integers(0, size, size=(2, count))
        img[ys, xs] = rng.uniform(170, 255, size=(count, 1))
        return img, colors
    elif style == "rows":  # gently wavy field rows
        period = rng.uniform(0.1, 0.18)
        wave = 0.04 * np.sin(xx * 2 * math.pi * rng.uniform(0.5, 1.5))
        mask = 0.5 + 0.5 * np.sin(2 * math.pi * (yy + wave) / period)
    elif style == "confetti":  # pastel paper with small coloured confetti
        img = _blend(c0, c1, yy)
        count = int(rng.integers(size // 6, size // 3))
        ys, xs = rng.integers(0, size - 1, size=(2, count))
        hues = rng.random(count)
        for y, x, h in zip(ys.tolist(), xs.tolist(), hues.tolist(), strict=True):
            img[y : y + 2, x : x + 2] = np.asarray(colorsys.hsv_to_rgb(h, 0.6, 0.95)) * 255
        return img, colors
    elif style == "planks":  # wooden desk: horizontal planks with grain
        height = rng.uniform(0.18, 0.3)
        plank = np.floor((yy + rng.uniform(0, height)) / height)
        grain = 0.15 * np.sin(2 * math.pi * (yy * 9 + 0.3 * np.sin(xx * 7 + plank)))
        mask = np.clip((plank % 2) * 0.8 + grain + 0.1, 0, 1)
    else:  # pragma: no cover - guarded by the definitions
        raise ValueError(f"unknown style {style!r}")
    return _blend(c0, c1, mask.astype(np.float32)), colors


def render_background(spec: ImageSpec, image_size: int, rng: np.random.Generator | None = None):
    """The background of an image: ``((size, size, 3) float32, (2, 3) base colours)``.

    Args:
        spec: The image spec (its ``background`` and ``style`` choose the look).
        image_size: Side in pixels.
        rng: Generator to draw from; ``None`` starts the spec's own stream.
    """
    rng = np.random.default_rng(spec.seed) if rng is None else rng
    if spec.background == "neutral":
        return _neutral_background(spec.style, image_size, rng)
    return _context_background(spec.context, image_size, rng)


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
    for part in PARTS[spec.name]:
        pts = part.points @ matrix + offset
        fill = np.clip(np.asarray(part.color) * spec.brightness + tint, 0, 255)
        # A darker outline separates objects from similar backgrounds and from each other.
        line = _to_rgb(fill * 0.45) if part.outline else None
        out.append(([(x, y) for x, y in pts.tolist()], _to_rgb(fill), line))
    return out


def render_image(spec: ImageSpec, image_size: int = 64) -> Image.Image:
    """Render an image spec.

    Args:
        spec: What to draw (from :func:`cssa_lightning.synthetic.world.sample_image_spec`).
        image_size: Width and height in pixels.

    Returns:
        An RGB image of ``image_size`` x ``image_size`` pixels.

    Raises:
        ValueError: If ``image_size`` is smaller than 16.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    rng = np.random.default_rng(spec.seed)
    background, colors = render_background(spec, image_size, rng)
    big = image_size * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).resize(
        (big, big), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(canvas)
    # Small objects get a thinner outline so they do not turn into dark blobs.
    for obj in spec.objects:
        width = 1 if obj.radius * image_size < 7 else SUPERSAMPLE
        for pts, fill, line in _object_polygons(obj, big):
            if line is None:
                draw.polygon(pts, fill=fill)
            else:
                draw.polygon(pts, fill=fill, outline=line, width=width)

    if spec.occluder is not None:
        occ = spec.occluder
        target = spec.objects[occ.target]
        # A bar in a background colour whose near edge is `offset` radii from the object
        # centre, on the side given by `angle`, just large enough to hide that side.
        r = target.radius * big
        local = _rect(occ.offset * r, -1.1 * r, 1.25 * r, 1.1 * r)
        pts = _rotated(local, occ.angle) + (target.x * big, target.y * big)
        color = np.clip(colors[occ.color_index % len(colors)] + rng.normal(0, 15.0, 3), 0, 255)
        draw.polygon([(x, y) for x, y in pts.tolist()], fill=_to_rgb(color * 0.9))

    small = canvas.reduce(SUPERSAMPLE)
    pixels = np.asarray(small, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, spec.noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
