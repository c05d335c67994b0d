"""Albumentations pipelines: eval, weak and strong views of an RGB uint8 image.

All three end in CLIP normalisation and a CHW float tensor. The strong view is the weak one
followed by several randomly chosen photometric/geometric ops (RandAugment-style) and a cutout,
so it always differs from the weak view of the same image.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
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


def strong_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_ops: int = 2,
    cutout_max: float = 0.3,
) -> A.Compose:
    """Weak + ``num_ops`` random ops out of a RandAugment-like pool + cutout (one or two holes
    of ``cutout_max / 3`` to ``cutout_max`` of the side)."""
    pool = [
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=1.0),
        A.Posterize(num_bits=(4, 6), p=1.0),
        A.Solarize(threshold_range=(0.5, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.Sharpen(p=1.0),
        A.AutoContrast(p=1.0),
        A.Affine(rotate=(-30, 30), p=1.0),
        A.Affine(shear=(-15, 15), p=1.0),
        A.Affine(translate_percent=(-0.15, 0.15), p=1.0),
        A.GaussianBlur(blur_limit=(3, 5), p=1.0),
    ]
    return A.Compose(
        [
            *_weak_ops(image_size),
            A.SomeOf(pool, n=num_ops, replace=False, p=1.0),
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
