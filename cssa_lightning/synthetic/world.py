"""Worlds v2, v3 and v4: procedural multi-label image benchmarks where context and unlabeled data help.

No real images or weights can be downloaded, so the project draws its own. Each image picks a
context (kitchen, beach, ..., see :mod:`.contexts`) and 1-8 objects (:mod:`.shapes`), most of
them from the context's long-tailed class list; backgrounds are mostly neutral, so what tells
the context is which objects co-occur. About a third of the objects are small (ambiguous on
their own at 64 px), objects overlap partially and some are partly hidden by a bar or the
image border; a few class pairs are deliberately confusable. World v3 (:data:`V3`) keeps all of
that but draws objects the model can see (at most 6, none under ~1.5 patches across) and
captions with a weaker text prior (fewer objects named, twelve rare classes almost never named),
so that labels teach what pre-training did not; world v4 (:data:`V4`) draws v3's images with
half of the classes rare in the text.

Generation is split in two so tests can check statistics cheaply:

* :func:`sample_image_spec` draws an :class:`ImageSpec` (what is where) from a random
  generator, without any pixels;
* :func:`cssa_lightning.synthetic.render.render_image` turns a spec into a PIL image.

Worlds are written in the project's user data format::

    <folder>/
        images/000000.png ...
        metadata.jsonl   # {"file_name": "images/000000.png", "labels": ["apple", "cup"],
                         #  "context": "kitchen", "background": "neutral"}
        classes.txt      # all of CLASS_NAMES, one per line, in order

The ``pretrain`` split's lines also carry ``"caption"`` and ``"captions"`` (a list of
:data:`NUM_PRETRAIN_CAPTIONS` alt-text-like captions, the first equal to ``"caption"``).
Every image has its own random stream (:func:`image_rng`), so the files are byte-identical
whatever the number of worker processes, and the splits are independent.

Command line::

    python -m cssa_lightning.synthetic.world --root DIR --split train --num-images N \\
        --seed S --image-size 64 [--version v3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from cssa_lightning.progress import ProgressBar
from cssa_lightning.synthetic.captions import V2_CAPTIONS, CaptionStyle, make_caption
from cssa_lightning.synthetic.contexts import (
    CONTEXT_BACKGROUND_PROB,
    CONTEXT_PROBS,
    CONTEXT_WEIGHTS,
    CONTEXTS,
    NEUTRAL_STYLES,
    OUT_OF_CONTEXT_PROB,
    OUTSIDE_CLASSES,
)
from cssa_lightning.synthetic.render import render_image
from cssa_lightning.synthetic.shapes import CLASS_BY_NAME, CLASS_NAMES

Split = Literal["pretrain", "train", "val", "test"]
SPLITS: tuple[str, ...] = ("pretrain", "train", "val", "test")


@dataclass(frozen=True)
class WorldVersion:
    """What a world version draws: object counts and sizes, and how captions name objects.

    Attributes:
        name: Part of every world folder name, so caches of other versions are never reused.
        num_objects_probs: Probability of 1, 2, ... objects being attempted per image.
        small_prob: Probability that an object is small.
        small_radius: Radius range of small objects (fraction of the image side).
        radius_range: Radius range of normal objects by number of objects: crowded images need
            smaller objects so they fit without hiding each other.
        captions: How pre-training captions name the objects.
    """

    name: str
    num_objects_probs: tuple[float, ...]
    small_prob: float
    small_radius: tuple[float, float]
    radius_range: tuple[tuple[float, float], ...]
    captions: CaptionStyle

    def __post_init__(self) -> None:
        if not math.isclose(sum(self.num_objects_probs), 1.0):
            raise ValueError(f"{self.name}: num_objects_probs must sum to 1")
        if len(self.radius_range) < len(self.num_objects_probs):
            raise ValueError(f"{self.name}: a radius range is needed for every object count")


_V2_RADIUS_RANGE = (
    (0.22, 0.34),
    (0.18, 0.27),
    (0.16, 0.23),
    (0.14, 0.2),
    (0.13, 0.19),
    (0.12, 0.17),
    (0.11, 0.16),
    (0.1, 0.15),
)
#: World v2: 1-8 objects, a third of them small (6-10 px across at 64 px: about one 8-px
#: patch), captions name about two thirds of the objects and every class.
V2 = WorldVersion(
    name="v2",
    num_objects_probs=(0.10, 0.16, 0.18, 0.17, 0.14, 0.11, 0.08, 0.06),
    small_prob=0.35,
    small_radius=(0.05, 0.08),
    radius_range=_V2_RADIUS_RANGE,
    captions=V2_CAPTIONS,
)
#: Classes world v3's captions almost never name: one of each confusable pair (told apart from
#: its twin by colour or a detail the text never describes) and three more, one per context
#: family. Zero-shot CLIP knows little of them; labels must teach them.
V3_RARE_CLASSES: tuple[str, ...] = (
    "orange",
    "starfish",
    "banana",
    "bus",
    "umbrella",
    "ball",
    "flag",
    "fork",
    "book",
    "candle",
    "hat",
    "leaf",
)
#: World v3: objects the model can see and a text prior weaker than the pixels. At most 6
#: objects; small objects 12-16 px across at 64 px (1.5-2 patches of 8 px); captions name fewer
#: objects (half, a third of the small ones) and the rare classes 3 % of the time.
V3 = WorldVersion(
    name="v3",
    num_objects_probs=(0.12, 0.2, 0.22, 0.2, 0.15, 0.11),
    small_prob=0.3,
    small_radius=(0.095, 0.125),
    radius_range=_V2_RADIUS_RANGE[:6],
    captions=CaptionStyle(
        mention_prob=0.5,
        small_mention_prob=0.3,
        setting_prob=0.4,
        rare_classes=V3_RARE_CLASSES,
        rare_mention_prob=0.03,
    ),
)
#: World v4's rare classes: v3's twelve and twelve more that the pixels tell well (fully
#: supervised test AP 65-97 on world v3, zero-shot 59-96 there) and that have no twin among
#: the rare ones, spread over the contexts. Half of the classes are then learnt from labels.
V4_RARE_CLASSES: tuple[str, ...] = (
    *V3_RARE_CLASSES,
    "cup",
    "egg",
    "bottle",
    "fish",
    "shell",
    "tree",
    "house",
    "flower",
    "cake",
    "heart",
    "clock",
    "planet",
)
#: World v4: v3's images (the same objects, sizes and layout for every image index and seed)
#: with half of the classes never named in captions or pre-training prompts, so that zero-shot
#: CLIP knows half of the label set not at all and labels have more to teach (the v3 pilots:
#: zero-shot was within 7.5 mAP of fully supervised; a first v4 try that still named them 3 %
#: of the time reached v3's zero-shot val mAP epoch for epoch, docs/protocol.md).
V4 = WorldVersion(
    name="v4",
    num_objects_probs=V3.num_objects_probs,
    small_prob=V3.small_prob,
    small_radius=V3.small_radius,
    radius_range=V3.radius_range,
    captions=replace(V3.captions, rare_classes=V4_RARE_CLASSES, rare_mention_prob=0.0),
)
WORLD_VERSIONS: dict[str, WorldVersion] = {v.name: v for v in (V2, V3, V4)}
#: The version a world is drawn from unless another is asked for.
WORLD_VERSION = V2.name
VersionName = Literal["v2", "v3", "v4"]

# Two objects' centres must be at least this fraction of the sum of their radii apart, so
# overlap is partial and every labelled object stays visible.
_MIN_CENTRE_GAP = 0.72
# Probability that an image gets an extra occluder (a bar of background colour).
OCCLUDER_PROB = 0.3
NUM_PRETRAIN_CAPTIONS = 5
# Images per task handed to a worker process (the output does not depend on it).
_CHUNK = 200

log = logging.getLogger(__name__)


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
        in_context: Whether the class was drawn from the image context's classes.
        small: Whether the object was drawn small.
    """

    name: str
    x: float
    y: float
    radius: float
    rotation: float
    flip: bool
    brightness: float
    tint: tuple[float, float, float]
    in_context: bool
    small: bool


@dataclass(frozen=True)
class OccluderSpec:
    """A bar in a background colour covering one side of an object.

    Attributes:
        target: Index of the object it covers part of.
        angle: Direction (degrees) from the object centre towards the bar.
        offset: Distance from the object centre to the bar's near edge, in object radii.
        color_index: Which of the background's two base colours the bar takes.
    """

    target: int
    angle: float
    offset: float
    color_index: int


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image.

    Attributes:
        context: Context name.
        background: ``"neutral"`` (context-free style) or ``"context"`` (the context's own).
        style: Background style name.
        objects: Objects in drawing order (later ones are on top).
        occluder: Optional bar that hides part of one object.
        noise_std: Standard deviation of the Gaussian pixel noise (0-255 scale).
        seed: Seeds the background texture and the pixel noise.
    """

    context: str
    background: str
    style: str
    objects: tuple[ObjectSpec, ...]
    occluder: OccluderSpec | None
    noise_std: float
    seed: int

    @property
    def labels(self) -> list[str]:
        """Unique class names present, in CLASS_NAMES order."""
        present = {o.name for o in self.objects}
        return [name for name in CLASS_NAMES if name in present]


def sample_image_spec(rng: np.random.Generator, version: WorldVersion = V2) -> ImageSpec:
    """Draw what one image shows, without rendering it.

    Args:
        rng: Random generator; the spec is a pure function of its state.
        version: Object counts and sizes to draw from.

    Returns:
        The image spec. It has 1 to ``len(version.num_objects_probs)`` objects; an object
        whose placement keeps failing is dropped rather than allowed to hide another one.
    """
    context = CONTEXTS[int(rng.choice(len(CONTEXTS), p=CONTEXT_PROBS))]
    if rng.random() < CONTEXT_BACKGROUND_PROB:
        background, style = "context", context.style
    else:
        background, style = "neutral", NEUTRAL_STYLES[int(rng.integers(len(NEUTRAL_STYLES)))]
    weights = CONTEXT_WEIGHTS[context.name]
    outside = OUTSIDE_CLASSES[context.name]
    probs = version.num_objects_probs
    n = int(rng.choice(len(probs), p=probs)) + 1
    lo, hi = version.radius_range[n - 1]

    objects: list[ObjectSpec] = []
    for _ in range(n):
        in_context = bool(rng.random() >= OUT_OF_CONTEXT_PROB)
        if in_context:
            name = context.classes[int(rng.choice(len(context.classes), p=weights))]
        else:
            name = outside[int(rng.integers(len(outside)))]
        small = bool(rng.random() < version.small_prob)
        radius = float(rng.uniform(*version.small_radius) if small else rng.uniform(lo, hi))
        # Centres may sit close to the border so some objects are cropped (up to ~35% of
        # their radius), another form of partial occlusion.
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
        max_rot = CLASS_BY_NAME[name].max_rotation
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
                in_context=in_context,
                small=small,
            )
        )

    occluder = None
    if rng.random() < OCCLUDER_PROB:
        occluder = OccluderSpec(
            target=int(rng.integers(len(objects))),
            angle=float(rng.uniform(0, 360)),
            offset=float(rng.uniform(0.25, 0.6)),
            color_index=int(rng.integers(2)),
        )
    return ImageSpec(
        context=context.name,
        background=background,
        style=style,
        objects=tuple(objects),
        occluder=occluder,
        noise_std=float(rng.uniform(2.0, 12.0)),
        seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------
# Writing worlds to disk.
# --------------------------------------------------------------------------


def _split_code(split: str) -> int:
    # A stable per-split number (Python's hash() is salted per process).
    return zlib.crc32(split.encode())


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image of one split.

    Every image has its own stream so images can be made in any order or process and the
    result is the same; streams of different splits are independent, so the pretrain, train,
    val and test splits are disjoint.
    """
    return np.random.default_rng([seed, _split_code(split), index])


def world_version(name: str) -> WorldVersion:
    """The :class:`WorldVersion` called ``name`` (``"v2"``, ``"v3"`` or ``"v4"``)."""
    try:
        return WORLD_VERSIONS[name]
    except KeyError:
        raise ValueError(
            f"world version must be one of {sorted(WORLD_VERSIONS)}, got {name!r}"
        ) from None


def _check_args(
    split: str, num_images: int, image_size: int, seed: int, version: str = WORLD_VERSION
) -> None:
    world_version(version)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def world_dir_name(
    split: str,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    version: VersionName = WORLD_VERSION,
) -> str:
    """Folder name of a world: ``<version>-<split>-<num_images>-<image_size>-s<seed>``."""
    return f"{version}-{split}-{num_images}-{image_size}-s{seed}"


def image_record(
    split: str, index: int, seed: int, version: VersionName = WORLD_VERSION
) -> tuple[ImageSpec, dict[str, object]]:
    """The spec of image ``index`` and its metadata line (without rendering)."""
    rng = image_rng(seed, split, index)
    drawn = world_version(version)
    spec = sample_image_spec(rng, drawn)
    record: dict[str, object] = {
        "file_name": f"images/{index:06d}.png",
        "labels": spec.labels,
        "context": spec.context,
        "background": spec.background,
    }
    if split == "pretrain":
        names = [o.name for o in spec.objects]
        small = [o.small for o in spec.objects]
        captions = [
            make_caption(names, spec.context, rng, small, drawn.captions)
            for _ in range(NUM_PRETRAIN_CAPTIONS)
        ]
        record["caption"] = captions[0]
        record["captions"] = captions
    return spec, record


def _make_one(args: tuple[Path, str, int, int, int, str]) -> str:
    """Render and save image ``index``; return its metadata line."""
    out_dir, split, index, image_size, seed, version = args
    spec, record = image_record(split, index, seed, version)
    render_image(spec, image_size).save(out_dir / str(record["file_name"]))
    return json.dumps(record)


def _make_chunk(args: tuple[Path, str, int, int, int, int, str]) -> list[str]:
    out_dir, split, start, stop, image_size, seed, version = args
    return [_make_one((out_dir, split, i, image_size, seed, version)) for i in range(start, stop)]


def generate_world(
    out_dir: Path,
    split: Split,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    version: VersionName = WORLD_VERSION,
) -> None:
    """Write a world into ``out_dir`` (which must not hold one already).

    Most callers want :func:`ensure_world`, which also caches and never leaves a
    half-written folder.

    Args:
        out_dir: Folder to fill; created if missing.
        split: Which split's random stream to use.
        num_images: How many images.
        image_size: Width and height in pixels.
        seed: Base seed.
        workers: Processes to use; default is up to 2, and 1 for small worlds where starting
            processes costs more than it saves.
        version: World version (``"v2"``, ``"v3"`` or ``"v4"``, see :class:`WorldVersion`).

    Raises:
        ValueError: On a bad argument.
    """
    _check_args(split, num_images, image_size, seed, version)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = 1 if num_images < 500 else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    chunks = [
        (out_dir, split, start, min(start + _CHUNK, num_images), image_size, seed, version)
        for start in range(0, num_images, _CHUNK)
    ]
    parts: list[list[str]] = []
    if workers == 1:
        with _progress(num_images, split) as progress:
            for chunk in chunks:
                parts.append(_make_chunk(chunk))
                progress.update(len(parts[-1]))
    else:
        # Fork where it exists: workers then skip re-importing the package (which pulls in
        # torch and transformers) and start instantly. The pool starts before the progress bar
        # (and its monitor thread) exists.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers) as pool, _progress(num_images, split) as progress:
            # imap keeps the chunks in order, so the files do not depend on the workers.
            for part in pool.imap(_make_chunk, chunks, chunksize=1):
                parts.append(part)
                progress.update(len(part))
    lines = [line for part in parts for line in part]
    (out_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (out_dir / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")


def _progress(num_images: int, split: str) -> ProgressBar:
    return ProgressBar(f"world {split}", num_images)


def _is_complete(folder: Path) -> bool:
    return (folder / "metadata.jsonl").is_file() and (folder / "classes.txt").is_file()


def ensure_world(
    root: Path | str,
    split: Split,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    version: VersionName = WORLD_VERSION,
) -> Path:
    """Return the folder of a world, generating it first if needed.

    The world is written to a temporary folder under ``root`` and renamed into place when
    complete, so an interrupted run never leaves a half world.

    Args:
        root: Parent folder of all worlds.
        split: "pretrain", "train", "val" or "test"; each has its own random stream.
        num_images: How many images.
        image_size: Width and height in pixels.
        seed: Base seed; the same arguments always give byte-identical files.
        version: World version (``"v2"``, ``"v3"`` or ``"v4"``, see :class:`WorldVersion`).

    Returns:
        ``root / world_dir_name(split, num_images, image_size, seed)``.

    Raises:
        ValueError: On a bad argument.
    """
    _check_args(split, num_images, image_size, seed, version)
    root = Path(root)
    final = root / world_dir_name(split, num_images, image_size, seed, version)
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    log.info("writing the %s world (%d images, %d px) to %s", split, num_images, image_size, final)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        generate_world(tmp, split, num_images, image_size, seed, version=version)
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
    log.info("wrote %s in %.1f s", final.name, time.perf_counter() - start)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: generate (or find) one world."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="parent folder of worlds")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--version", choices=sorted(WORLD_VERSIONS), default=WORLD_VERSION)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        folder = ensure_world(
            args.root, args.split, args.num_images, args.image_size, args.seed, args.version
        )
    except ValueError as err:
        parser.error(str(err))
    print(folder)
    print(f"took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
