"""Tests of the procedural world (synthetic multi-label images)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cssa_lightning import world
from cssa_lightning.world import (
    CLASS_NAMES,
    CONFUSABLE_PAIRS,
    SCENES,
    ensure_world,
    image_rng,
    make_caption,
    render_image,
    sample_image_spec,
    split_words,
    vocabulary,
)

NUM = 40


@pytest.fixture(scope="module")
def specs() -> list[world.ImageSpec]:
    """3,000 train specs, sampled without rendering."""
    return [sample_image_spec(image_rng(0, "train", i)) for i in range(3000)]


def _read_metadata(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_definitions() -> None:
    assert len(CLASS_NAMES) >= 20 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert len(SCENES) >= 5
    scene_counts = Counter(c for s in SCENES for c in s.classes)
    assert set(scene_counts) == set(CLASS_NAMES)
    assert sum(n > 1 for n in scene_counts.values()) >= 5, "classes shared across scenes"
    for a, b in CONFUSABLE_PAIRS:
        assert a in CLASS_NAMES and b in CLASS_NAMES


def test_world_on_disk(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "train", NUM, image_size=32, seed=3)
    assert folder == tmp_path / "train-40-32-s3"
    assert (folder / "classes.txt").read_text().splitlines() == list(CLASS_NAMES)
    records = _read_metadata(folder)
    assert len(records) == NUM
    for i, rec in enumerate(records):
        assert rec["file_name"] == f"images/{i:06d}.png"
        assert 1 <= len(rec["labels"]) <= 5
        assert len(set(rec["labels"])) == len(rec["labels"])
        assert set(rec["labels"]) <= set(CLASS_NAMES)
        assert rec["scene"] in world.SCENE_NAMES
        assert "caption" not in rec
    from PIL import Image

    with Image.open(folder / records[0]["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    # Only the finished folder is left behind (no temporary folders).
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_determinism_and_seeds(tmp_path: Path) -> None:
    a = ensure_world(tmp_path / "a", "test", NUM, seed=1)
    b = ensure_world(tmp_path / "b", "test", NUM, seed=1)
    c = ensure_world(tmp_path / "c", "test", NUM, seed=2)
    assert _folder_bytes(a) == _folder_bytes(b)
    assert (a / "metadata.jsonl").read_bytes() != (c / "metadata.jsonl").read_bytes()
    assert (a / "images/000000.png").read_bytes() != (c / "images/000000.png").read_bytes()
    # Multiprocessing gives the same files as one process.
    d = tmp_path / "d"
    world.generate_world(d, "test", NUM, seed=1, workers=2)
    assert _folder_bytes(d) == _folder_bytes(a)


def test_ensure_world_reuses_complete_folder(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "train", 5)
    marker = folder / "images/000000.png"
    marker.write_bytes(b"kept")
    assert ensure_world(tmp_path, "train", 5) == folder
    assert marker.read_bytes() == b"kept"


def test_splits_are_disjoint() -> None:
    def first_images(split: str) -> list[bytes]:
        return [
            render_image(sample_image_spec(image_rng(0, split, i)), 32).tobytes() for i in range(10)
        ]

    pretrain, train, test = (set(first_images(s)) for s in ("pretrain", "train", "test"))
    assert not pretrain & train and not pretrain & test and not train & test


def test_pretrain_has_captions(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "pretrain", 10, image_size=32)
    for rec in _read_metadata(folder):
        assert rec["caption"] == rec["captions"][0]
        assert len(rec["captions"]) == world.NUM_PRETRAIN_CAPTIONS
        for caption in rec["captions"]:
            assert set(rec["labels"]) <= set(split_words(caption))


def test_render_image(specs: list[world.ImageSpec]) -> None:
    image = render_image(specs[0], 48)
    assert image.mode == "RGB" and image.size == (48, 48)
    assert render_image(specs[0], 48).tobytes() == image.tobytes()
    # Objects actually change the pixels: the same spec without objects differs.
    empty = world.ImageSpec(specs[0].scene, (), None, specs[0].noise_std, specs[0].seed)
    diff = np.abs(np.asarray(render_image(empty, 48), float) - np.asarray(image, float))
    assert diff.mean() > 3


def test_labels_per_image(specs: list[world.ImageSpec]) -> None:
    counts = Counter(len(s.labels) for s in specs)
    assert set(counts) <= {1, 2, 3, 4, 5}
    assert counts[1] and counts[3] and counts[5]


def test_out_of_scene_fraction(specs: list[world.ImageSpec]) -> None:
    scene_classes = {s.name: set(s.classes) for s in SCENES}
    outside = [o.name not in scene_classes[s.scene] for s in specs for o in s.objects]
    assert 0.09 <= np.mean(outside) <= 0.15


def test_long_tail(specs: list[world.ImageSpec]) -> None:
    counts = Counter(label for s in specs for label in s.labels)
    assert set(counts) == set(CLASS_NAMES)
    assert max(counts.values()) >= 5 * min(counts.values())


def test_captions_and_vocabulary(specs: list[world.ImageSpec]) -> None:
    vocab = set(vocabulary())
    assert all(word == word.lower() and word.isalpha() for word in vocab)
    rng = np.random.default_rng(0)
    used: set[str] = set()
    for spec in specs[:2000]:
        words = split_words(make_caption(spec.labels, spec.scene, rng))
        assert set(spec.labels) <= set(words)
        assert set(words) <= vocab
        used |= set(words)
    assert used | set(CLASS_NAMES) | set(world.SCENE_NAMES) == vocab, "unused template words"
    for name in CLASS_NAMES:
        assert set(split_words(f"a photo of a {name}.")) <= vocab


def test_captions_vary() -> None:
    rng = np.random.default_rng(0)
    captions = {make_caption(["apple", "cup"], "kitchen", rng) for _ in range(200)}
    assert len(captions) > 10
    assert any("kitchen" in c for c in captions) and any("kitchen" not in c for c in captions)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"split": "valid"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"image_size": 4}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, argument: str) -> None:
    args = {"root": tmp_path, "split": "train", "num_images": 4} | kwargs
    with pytest.raises(ValueError, match=argument):
        ensure_world(**args)


def test_bad_caption_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="labels"):
        make_caption([], "kitchen", rng)
    with pytest.raises(ValueError, match="labels"):
        make_caption(["dragon"], "kitchen", rng)
    with pytest.raises(ValueError, match="scene"):
        make_caption(["apple"], "moon", rng)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world.main(["--root", str(tmp_path), "--split", "test", "--num-images", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "test-3-64-s0")
    assert out[1].startswith("took ")
