"""The preprocessing of an exported model, with numpy and PIL only (no torch, no OpenCV).

``cssa export`` copies this file into the export directory as ``preprocess.py``, so that
``model.onnx`` can be run with onnxruntime, numpy and PIL alone::

    import onnxruntime
    from preprocess import pixel_values

    session = onnxruntime.InferenceSession("exported/model.onnx")
    (probs,) = session.run(None, {"pixel_values": pixel_values(["a.jpg"], "exported")})

It reproduces what the package does before the network (``cssa_lightning.data.transforms``'s
eval transform): the image as RGB uint8, a square resize with OpenCV's bicubic interpolation
(``INTER_CUBIC``: the cubic convolution kernel with ``a = -0.75``, pixel centres aligned, edges
replicated, no antialiasing), rounded back to uint8, then ``(x / 255 - mean) / std``, channels
first. On 8-bit images it gives the same pixels as OpenCV (the package's tests check the
probabilities within 1e-3; PIL's own bicubic resize, which antialiases, differs by up to ~1e-2).
High-bit-depth images (16-bit grey, float) are scaled by the package before this step; here
they go through ``PIL.Image.convert("RGB")``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cubic_weights(offsets: np.ndarray, a: float = -0.75) -> np.ndarray:
    """``(n, 4)`` weights of the taps at -1, 0, 1, 2 around each fractional offset in [0, 1)."""
    x = np.stack([1 + offsets, offsets, 1 - offsets, 2 - offsets], axis=1)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, far)


def resize_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resize one axis (0: rows, 1: columns) of a float ``(H, W, C)`` image to ``size``."""
    length = image.shape[axis]
    position = (np.arange(size) + 0.5) * (length / size) - 0.5
    start = np.floor(position).astype(np.int64)
    weights = cubic_weights(position - start)
    taps = np.clip(start[:, None] + np.arange(-1, 3)[None, :], 0, length - 1)
    gathered = np.take(image, taps, axis=axis)  # the axis becomes (size, 4)
    if axis == 0:
        return np.einsum("sk...,sk->s...", gathered, weights)
    return np.einsum("hsk...,sk->hs...", gathered, weights)


def resize_cubic(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` image resized to ``(size, size, 3)`` as OpenCV's
    ``cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)`` does."""
    values = resize_axis(resize_axis(image.astype(np.float64), size, 0), size, 1)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def rgb_uint8(image: Any) -> np.ndarray:
    """A path (any format PIL reads), a PIL image or an RGB uint8 ``(H, W, 3)`` array, as
    an RGB uint8 array."""
    from PIL import Image

    if isinstance(image, str | Path):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return array


def preprocess(
    image: Any, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """One image as the network's input: ``(3, image_size, image_size)`` float32."""
    resized = resize_cubic(rgb_uint8(image), image_size).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    std32 = np.asarray(std, dtype=np.float32) * np.float32(255.0)
    return ((resized - mean32) / std32).transpose(2, 0, 1).copy()


def pixel_values(images: Sequence[Any], directory: str | Path) -> np.ndarray:
    """``(B, 3, S, S)`` float32 ``pixel_values`` of images for the export in ``directory``
    (its ``config.json`` gives the size, mean and std)."""
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    p = config["preprocessing"]
    return np.stack([preprocess(image, p["image_size"], p["mean"], p["std"]) for image in images])
