"""Session fixtures: a tiny CLIP saved with ``save_pretrained`` and a small image folder.

Everything is generated once per test session, offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from cssa_lightning.synthetic.tiny_clip import (
    build_clip_tokenizer,
    save_clip_checkpoint,
    tiny_clip_config,
)

CLASS_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta"]
COLOURS = [
    (220, 30, 30),
    (30, 200, 30),
    (30, 30, 220),
    (230, 220, 20),
    (20, 220, 220),
    (220, 20, 220),
]
TEMPLATE_WORDS = ["a", "photo", "picture", "of", "the"]
IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (32x32 images, width 32) with a real BPE tokenizer."""
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(CLASS_NAMES + TEMPLATE_WORDS)
    config = tiny_clip_config(
        len(tokenizer),
        image_size=IMAGE_SIZE,
        patch_size=8,
        width=32,
        layers=1,
        heads=2,
        embed_dim=32,
    )
    out = tmp_path_factory.mktemp("tiny-clip")
    save_clip_checkpoint(CLIPModel(config), tokenizer, out, IMAGE_SIZE)
    return out


def draw_image(labels: list[int], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    image = np.full((size, size, 3), 90, dtype=np.uint8)
    image += rng.integers(0, 30, image.shape, dtype=np.uint8)
    for k in labels:
        x, y = rng.integers(0, size - 10, 2)
        image[y : y + 10, x : x + 10] = COLOURS[k]
    return image


def write_image_folder(root: Path, num_images: int, seed: int) -> Path:
    """Images with 1-3 coloured squares; ``labels`` name the colours present."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(num_images):
        labels = sorted(rng.choice(len(CLASS_NAMES), rng.integers(1, 4), replace=False).tolist())
        name = f"images/{i:04d}.png"
        Image.fromarray(draw_image(labels, rng)).save(root / name)
        lines.append(json.dumps({"file_name": name, "labels": [CLASS_NAMES[k] for k in labels]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory) -> dict[str, Path]:
    """``{"train": 96, "val": 24, "test": 32 images}`` in the imagefolder + metadata.jsonl
    format."""
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_image_folder(root / "train", 96, seed=1),
        "val": write_image_folder(root / "val", 24, seed=3),
        "test": write_image_folder(root / "test", 32, seed=2),
    }


@pytest.fixture(scope="session")
def trained_cssa(tmp_path_factory, image_folders, tiny_clip_dir) -> Path:
    """A ``CSSATask`` checkpoint after two short epochs (warm-up, then every loss), so that
    its teacher, thresholds and contexts are set."""
    from cssa_lightning.cli import build_cli

    from .test_cli import write_config

    out = tmp_path_factory.mktemp("trained")
    fast = {"warmup_epochs": 1, "rampup_epochs": 0.5, "num_contexts": 2, "attention_heads": 4}
    config = write_config(out, image_folders, tiny_clip_dir, "cssa_lightning.CSSATask", fast)
    build_cli(["fit", "--config", str(config), "--test_after_fit=false", "--trainer.logger=false"])
    return next(out.rglob("*.ckpt"))
