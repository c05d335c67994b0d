"""The prepared image cache: resizing, keys, reuse, invalidation and the data module hook."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import cssa_lightning.data.prepare as prepare
from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.data.prepare import prepare_image, prepare_images, with_prepared_images
from cssa_lightning.data.records import build_record_table, load_image, read_source

from .test_datamodule import datamodule_options


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth image (JPEG-friendly, like a photo) with a bright square to locate."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    image = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).copy()
    image[: height // 4, : width // 4] = 255
    return Image.fromarray(image)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate([(1024, 768), (480, 640), (200, 150)]):
        path = folder / f"{i}.jpg"
        _photo(w, h, seed=i).save(path, quality=92)
        paths.append(str(path))
    return paths


def test_prepare_image_resizes_the_shorter_side_and_keeps_the_content(photos):
    sizes = [Image.open(io.BytesIO(prepare_image(p, 256))).size for p in photos]
    assert sizes == [(341, 256), (256, 341), (200, 150)]  # never enlarged
    prepared = load_image({"path": photos[0], "bytes": prepare_image(photos[0], 256)})
    reference = np.asarray(Image.open(photos[0]).resize((341, 256), Image.Resampling.BICUBIC))
    assert np.abs(prepared.astype(int) - reference.astype(int)).mean() < 4


def test_prepare_image_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*bad.jpg"):
        prepare_image(str(bad), 256)


def test_cache_is_reused_and_invalidated_by_files_and_options(photos, tmp_path, monkeypatch):
    calls = []
    original = prepare.prepare_image
    monkeypatch.setattr(
        prepare, "prepare_image", lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    )
    cache = tmp_path / "cache"
    first = prepare_images(photos, cache, size=128)
    assert len(calls) == 3 and len(first) == 3
    assert [cell["path"] for cell in first["image"]] == photos
    again = prepare_images(photos, cache, size=128)
    assert len(calls) == 3  # read from the cache
    assert again["image"][1]["bytes"] == first["image"][1]["bytes"]
    prepare_images(photos, cache, size=160)  # another size: a new entry
    assert len(calls) == 6
    os.utime(photos[2], ns=(1, 1))  # a changed file: a new entry
    prepare_images(photos, cache, size=128)
    assert len(calls) == 9
    entries = sorted(p for p in cache.iterdir())
    assert len(entries) == 3 and not [p for p in entries if p.name.endswith(".partial")]
    info = json.loads((entries[0] / "info.json").read_text())
    assert info["images"] == 3 and info["size"] in (128, 160)


def test_cache_prepared_by_several_processes_keeps_the_order(photos, tmp_path):
    many = photos * 3
    prepared = prepare_images(many, tmp_path / "cache", size=96, num_proc=2)
    assert [cell["path"] for cell in prepared["image"]] == many
    again = prepare_images(many, tmp_path / "cache", size=96)
    assert again["image"][4]["bytes"] == prepare_image(many[4], 96)


def test_prepared_table_keeps_targets_and_order(image_folders, tmp_path):
    records = read_source(image_folders["test"])
    table = build_record_table(records, ["red", "green", "blue", "yellow", "cyan", "magenta"])
    cached = with_prepared_images(table, tmp_path / "cache", size=32)
    assert cached["target"] == table["target"]
    assert [c["path"] for c in cached["image"]] == [c["path"] for c in table["image"]]
    np.testing.assert_array_equal(
        load_image(cached[5]["image"]).shape, load_image(table[5]["image"]).shape
    )


def test_data_module_prepares_on_first_use_and_loads_batches(image_folders, tmp_path):
    options = datamodule_options(
        image_folders, image_cache=str(tmp_path / "cache"), image_cache_size=32
    )
    datamodule = MultiLabelDataModule(**options)
    datamodule.prepare_data()
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test
    datamodule.setup("fit")
    assert datamodule.train_table[0]["image"]["bytes"] is not None
    batch = next(iter(datamodule.train_dataloader()))[0]
    assert batch["unlabeled"]["image_strong"].shape == (8, 3, 32, 32)
    assert next(iter(datamodule.test_dataloader()))["image"].shape == (16, 3, 32, 32)
    with pytest.raises(ValueError, match=r"image_cache_size \(16\) must be at least image_size"):
        MultiLabelDataModule(**{**options, "image_cache_size": 16})


def test_prepare_command_fills_the_cache_the_data_module_reads(image_folders, tmp_path, capsys):
    prepare.main([str(image_folders["test"]), "--cache_dir", str(tmp_path / "c"), "--size", "32"])
    (entry,) = list((tmp_path / "c").iterdir())
    paths = [str(r.path) for r in read_source(image_folders["test"])]
    assert entry.name == prepare.cache_key(paths, 32, 95)
    with pytest.raises(SystemExit, match=r"error: data source .*nowhere does not exist"):
        prepare.main([str(tmp_path / "nowhere"), "--cache_dir", str(tmp_path / "c")])
