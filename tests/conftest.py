"""Session fixtures: a tiny CLIP saved with ``save_pretrained`` and a small image folder.

Everything is generated once per test session, offline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np
import pytest
import torch
import yaml
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


def make_tiny_clip(out: Path, layers: int = 1) -> Path:
    """Save a randomly initialised CLIP (32x32 images, width 32, ``layers`` vision blocks, seed
    0) with a real BPE tokenizer into ``out``."""
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(CLASS_NAMES + TEMPLATE_WORDS)
    config = tiny_clip_config(
        len(tokenizer),
        image_size=IMAGE_SIZE,
        patch_size=8,
        width=32,
        layers=layers,
        heads=2,
        embed_dim=32,
    )
    save_clip_checkpoint(CLIPModel(config), tokenizer, out, IMAGE_SIZE)
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (32x32 images, width 32) with a real BPE tokenizer."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


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
    from cssa_lightning.commands.cli import build_cli

    out = tmp_path_factory.mktemp("trained")
    fast = {
        "warmup_epochs": 1,
        "rampup_epochs": 0.5,
        "context": {"num_contexts": 2},
        "attention_heads": 4,
    }
    config = fit_config(out, image_folders, tiny_clip_dir, "cssa_lightning.CSSATask", fast)
    build_cli(["fit", "--config", str(config), "--test_after_fit=false", "--trainer.logger=false"])
    return next(out.rglob("*.ckpt"))


@pytest.fixture
def bare_images(tmp_path, image_folders):
    """Ten unlabeled test images (no metadata) and one corrupt file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for path in sorted((image_folders["test"] / "images").glob("*.png"))[:10]:
        shutil.copy(path, folder / "sub" / path.name)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def fit_config(
    out: Path,
    folders: dict[str, Path],
    clip_dir: Path | str,
    task: str = "cssa_lightning.MultiLabelTask",
    model_options: dict | None = None,
    *,
    seed: int = 1,
    test_after_fit: bool = True,
    data: dict | None = None,
    **trainer,
) -> Path:
    """Write a tiny ``cssa fit`` config to ``out/input.yaml`` and return its path.

    By default: seed 1, two epochs of three batches on the CPU into ``out``, logged every
    step to an offline W&B run, the :class:`tests.test_cli.RecordMetrics` callback, the
    ``folders``' train / val / test images at 32 px, and a test after the fit.

    Args:
        out: The run's ``default_root_dir`` (created), where the config is written.
        folders: ``{"train", "val", "test"}`` image folders (the ``image_folders`` fixture).
        clip_dir: The CLIP checkpoint.
        task: The model's class path.
        model_options: More init args of the model (``lr`` is 1e-3).
        seed: ``seed_everything``.
        test_after_fit: ``test_after_fit``.
        data: Init args of the data module that replace or add to the defaults.
        **trainer: Trainer settings that replace or add to the defaults (``logger=False``,
            ``callbacks=[...]``; ``None`` stands for Lightning's default).
    """
    config = {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "limit_train_batches": 3,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(out),
            "log_every_n_steps": 1,
            "callbacks": [{"class_path": "tests.test_cli.RecordMetrics"}],
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "cssa-tests", "save_dir": str(out), "offline": True},
            },
            **trainer,
        },
        "model": {
            "class_path": task,
            "init_args": {"clip_checkpoint": str(clip_dir), "lr": 1.0e-3, **(model_options or {})},
        },
        "data": {
            "class_path": "cssa_lightning.MultiLabelDataModule",
            "init_args": {
                "train_source": str(folders["train"]),
                "val_source": str(folders["val"]),
                "test_source": str(folders["test"]),
                "labeled_ratio": 0.25,
                "image_size": 32,
                "labeled_batch_size": 4,
                "unlabeled_batch_size": 8,
                "eval_batch_size": 16,
                **(data or {}),
            },
        },
        "test_after_fit": test_after_fit,
    }
    out.mkdir(parents=True, exist_ok=True)
    # Not config.yaml, the name of Lightning's own copy of a run's config.
    path = out / "input.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint_every_step(out: Path) -> dict:
    """A ``ModelCheckpoint`` callback config that keeps every step's checkpoint and
    ``last.ckpt`` in ``out/checkpoints``."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(out / "checkpoints"),
            "every_n_train_steps": 1,
            "save_last": True,
            "save_top_k": -1,
        },
    }
