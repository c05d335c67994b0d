"""Albumentations pipelines: eval, weak and strong views of an RGB uint8 image.

All three end in CLIP normalisation and a CHW float tensor. The strong view is the weak one
followed by several randomly chosen photometric/geometric ops (RandAugment-style) and a cutout,
so it always differs from the weak view of the same image. Its pool of ops can leave out those
that change colours (:func:`strong_pool`), and its magnitude can be scaled down.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

# The statistics of OpenAI's CLIP pre-processing: the default normalisation, also used by the
# project's tiny checkpoints so that every checkpoint here normalises images the same way.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize to ``image_size`` squared and normalise."""
    return A.Compose(
        [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC), *_normalise(mean, std)]
    )


def _weak_ops(image_size: int) -> list[A.BasicTransform]:
    return [
        A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(p=0.5),
        # A small random crop (translation and slight zoom), as in FixMatch's weak view.
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
    ]


def weak_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Eval + horizontal flip + a small random crop."""
    return A.Compose([*_weak_ops(image_size), *_normalise(mean, std)])


StrongOps = Literal["full", "colour_preserving"]
"""The pool of the strong view's random ops: see :func:`strong_pool`."""

StrongOpName = Literal[
    "colour_jitter",
    "posterize",
    "solarize",
    "equalize",
    "sharpen",
    "autocontrast",
    "rotate",
    "shear",
    "translate",
    "blur",
]
"""The ops of the ``full`` pool, in its order (``only`` of :func:`strong_pool` picks some)."""
STRONG_OP_NAMES: tuple[str, ...] = get_args(StrongOpName)
StrongBorder = Literal["constant", "reflect"]
"""What the strong view's geometric ops fill the uncovered area with: see :func:`strong_pool`."""

# Ops that change hue or colour identity (or, for Posterize, quantise colours away): left out
# of the colour-preserving pool, whose colour jitter also keeps saturation and hue.
COLOUR_CHANGING_OPS: tuple[type[A.BasicTransform], ...] = (
    A.Posterize,
    A.Solarize,
    A.Equalize,
    A.AutoContrast,
)
MAX_STRONG_MAGNITUDE = 2.0


def check_strong_options(
    ops: str,
    num_ops: int,
    magnitude: float,
    translate: float,
    only: Sequence[str] | None = None,
) -> None:
    """Raise a ``ValueError`` naming the data-module option (``strong_*``) that is invalid."""
    if ops not in get_args(StrongOps):
        raise ValueError(f"strong_ops must be one of {get_args(StrongOps)}, got {ops!r}")
    if only is not None:
        family = [name for name, _ in _named_pool(ops, 1.0, 0.15)]
        unknown = [name for name in only if name not in family]
        if unknown or not only:
            raise ValueError(
                f"strong_op_names must be a non-empty list of ops of the {ops!r} pool "
                f"({', '.join(family)}), got {list(only)!r}"
            )
    if not (
        isinstance(magnitude, int | float)
        and not isinstance(magnitude, bool)
        and 0.0 <= magnitude <= MAX_STRONG_MAGNITUDE
    ):
        raise ValueError(
            f"strong_magnitude must be a number in [0, {MAX_STRONG_MAGNITUDE:g}], got {magnitude!r}"
        )
    if not (
        isinstance(translate, int | float)
        and not isinstance(translate, bool)
        and 0.0 <= translate <= 1.0
    ):
        raise ValueError(f"strong_translate must be a number in [0, 1], got {translate!r}")
    size = len(strong_pool(ops, magnitude, translate, only))
    if not (isinstance(num_ops, int) and not isinstance(num_ops, bool) and 0 <= num_ops <= size):
        raise ValueError(
            f"strong_num_ops must be an integer in [0, {size}] (the size of the "
            f"{ops!r} pool), got {num_ops!r}"
        )


def strong_pool(
    ops: StrongOps = "full",
    magnitude: float = 1.0,
    translate: float = 0.15,
    only: Sequence[StrongOpName] | None = None,
    border: StrongBorder = "constant",
) -> list[A.BasicTransform]:
    """The strong view's pool of random ops, each applied whenever drawn.

    ``"full"`` is a RandAugment-like pool. ``"colour_preserving"`` leaves out the ops of
    :data:`COLOUR_CHANGING_OPS` and jitters brightness and contrast only: it keeps the hue
    (up to rounding and clipping), so that colour still tells classes apart. ``magnitude``
    scales every range (rotation 30 degrees, shear 15 degrees, translation ``translate`` of the
    side, colour-jitter strengths, blur sigma, sharpen alpha, the bits Posterize removes and the
    part Solarize inverts); at 1 the ops are exactly the historical ones, at 0 every op with a
    magnitude is the identity (Solarize then inverts only saturated values, 255 in uint8).
    Equalize and AutoContrast have no magnitude. ``only`` keeps the named ops of the pool (in
    the pool's order): one op alone shows what it costs. ``border`` is what the geometric ops
    (rotate, shear, translate) put where the image moved away: black (``constant``, the
    historical view) or the image mirrored at its edge (``reflect``), which adds no corner or
    band that clean images never have.
    """
    pool = _named_pool(ops, magnitude, translate, border)
    return [op for name, op in pool if only is None or name in only]


def _named_pool(
    ops: StrongOps, magnitude: float, translate: float, border: StrongBorder = "constant"
) -> list[tuple[str, A.BasicTransform]]:
    m = magnitude
    edge = {"border_mode": cv2.BORDER_REFLECT_101} if border == "reflect" else {}
    keep_colour = ops == "colour_preserving"
    pool = [
        A.ColorJitter(
            brightness=0.4 * m,
            contrast=0.4 * m,
            saturation=0.0 if keep_colour else 0.4 * m,
            hue=0.0 if keep_colour else 0.05 * m,
            p=1.0,
        ),
        A.Posterize(num_bits=(max(8 - round(4 * m), 1), max(8 - round(2 * m), 1)), p=1.0),
        A.Solarize(threshold_range=(max(1.0 - 0.5 * m, 0.0), 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.Sharpen(alpha=(min(0.2 * m, 1.0), min(0.5 * m, 1.0)), p=1.0),
        A.AutoContrast(p=1.0),
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0, **edge),
        A.Affine(shear=(-15 * m, 15 * m), p=1.0, **edge),
        A.Affine(translate_percent=(-translate * m, translate * m), p=1.0, **edge),
        # A Gaussian kernel of sigma 0 is undefined: the identity stands in for it.
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.5 * m, 3.0 * m), p=1.0)
        if m > 0
        else A.NoOp(p=1.0),
    ]
    named = list(zip(STRONG_OP_NAMES, pool, strict=True))
    if keep_colour:
        named = [(name, op) for name, op in named if not isinstance(op, COLOUR_CHANGING_OPS)]
    return named


def strong_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_ops: int = 2,
    cutout_max: float = 0.3,
    ops: StrongOps = "full",
    magnitude: float = 1.0,
    translate: float = 0.15,
    only: Sequence[StrongOpName] | None = None,
    border: StrongBorder = "constant",
) -> A.Compose:
    """Weak + ``num_ops`` distinct random ops out of :func:`strong_pool` ``(ops, magnitude,
    translate, only, border)`` + cutout (one or two holes of ``cutout_max / 3`` to ``cutout_max`` of the side).

    Raises:
        ValueError: an option is out of range (see :func:`check_strong_options`).
    """
    check_strong_options(ops, num_ops, magnitude, translate, only)
    return A.Compose(
        [
            *_weak_ops(image_size),
            A.SomeOf(
                strong_pool(ops, magnitude, translate, only, border),
                n=num_ops,
                replace=False,
                p=1.0,
            ),
            # Cutout: one to two holes, always applied.
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(cutout_max / 3, cutout_max),
                hole_width_range=(cutout_max / 3, cutout_max),
                fill=127,
                p=1.0,
            ),
            *_normalise(mean, std),
        ]
    )


class SeededViews:
    """A dataset whose transforms are reseeded per item, so that an item's augmentation depends
    on its seed alone, not on the loader worker or process that draws it.

    Albumentations keeps a numpy and a Python generator in every transform. Each pipeline of
    :meth:`_transforms` gets one shared pair, reseeded per item: cheaper than
    ``set_random_seed``, which builds new generators for every transform.
    """

    def _transforms(self) -> list[A.Compose]:
        raise NotImplementedError

    def _reseed(self, seed: int) -> None:
        generators = self.__dict__.setdefault("_generators", [])
        if not generators:
            for transform in self._transforms():
                pair = (np.random.default_rng(0), random.Random(0))
                _share_generators(transform, *pair)
                generators.append(pair)
        for offset, (numpy_rng, python_rng) in enumerate(generators):
            item_seed = (seed + offset * 0x9E3779B9) % 2**32
            numpy_rng.bit_generator.state = np.random.PCG64(item_seed).state
            python_rng.seed(item_seed)


def _share_generators(transform: Any, numpy_rng: np.random.Generator, python_rng: random.Random):
    transform.random_generator, transform.py_random = numpy_rng, python_rng
    for child in getattr(transform, "transforms", None) or []:
        _share_generators(child, numpy_rng, python_rng)
