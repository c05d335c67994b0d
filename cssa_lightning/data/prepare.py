"""A prepared image cache: each split's images decoded once, resized and stored in Arrow.

Decoding full-size JPEGs again every epoch costs more than the augmentations. Preparing a split
decodes each image once (JPEG draft mode: the decoder itself scales by 1/2, 1/4 or 1/8 when the
target size allows), resizes its shorter side to ``size`` (never enlarging), re-encodes it as a
JPEG and writes all of them to a Hugging Face ``datasets`` Arrow file, memory-mapped when read.

The cache is keyed by the image list (paths, file sizes and modification times) and the
preparation options, so a changed image, list, size or option prepares a new entry instead of
reading a stale one. Labels are not part of the cache: they come from the live record table, so
a relabelled split reuses its images. ::

    cssa prepare data/coco/train data/coco/val --cache_dir ~/.cache/cssa

or set ``image_cache`` on :class:`~cssa_lightning.data.datamodule.MultiLabelDataModule`, which
prepares missing entries on first use (once per machine, before training starts).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # datasets loads when images are prepared: `cssa prepare --help` stays fast
    import datasets

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored bytes would change for the same options
DATA_FILE = "images.arrow"
INFO_FILE = "info.json"


def _features() -> datasets.Features:
    """The cache's one column: image bytes (and path), not decoded."""
    import datasets

    return datasets.Features({"image": datasets.Image(decode=False)})


def prepare_image(path: str, size: int, quality: int = 95) -> bytes:
    """Decode ``path`` at reduced scale, resize its shorter side to ``size`` and encode a JPEG.

    Images whose shorter side is already at most ``size`` are only re-encoded.

    Raises:
        ValueError: The file cannot be decoded as an image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            scale = size / min(width, height)
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            if scale < 1 and image.format == "JPEG":
                # The JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding, never below target.
                image.draft("RGB", target)
            rgb = image.convert("RGB")
            if scale < 1:
                rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def cache_key(paths: Sequence[str], size: int, quality: int) -> str:
    """Hash of the image list (with each file's size and modification time) and the options."""
    digest = hashlib.sha256(
        json.dumps({"version": CACHE_VERSION, "size": size, "quality": quality}).encode()
    )
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _prepare_batch(batch: dict, size: int, quality: int) -> dict:
    return {
        "image": [
            {"bytes": prepare_image(image["path"], size, quality), "path": image["path"]}
            for image in batch["image"]
        ]
    }


def prepare_images(
    paths: Sequence[str],
    cache_dir: str | Path,
    size: int = 256,
    quality: int = 95,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """The prepared images of ``paths``, in order: from the cache, else prepared now.

    Args:
        paths: Image files.
        cache_dir: Folder of the cache; each entry is a sub-folder named by its key.
        size: Shorter side of the stored images (256 suits 224-pixel crops).
        quality: JPEG quality of the stored images.
        num_proc: Processes preparing images (``None``: one).

    Returns:
        A memory-mapped dataset with one ``image`` column (``{"bytes", "path"}``).
    """
    import datasets

    if size <= 0:
        raise ValueError(f"image cache size must be positive, got {size}")
    paths = [str(p) for p in paths]
    key = cache_key(paths, size, quality)
    entry = Path(cache_dir).expanduser() / key
    if (entry / INFO_FILE).is_file():
        log.info("image cache %s: %d images at shorter side %d", entry, len(paths), size)
        return _load(entry)
    partial = entry.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    source = datasets.Dataset.from_dict(
        {"image": [{"path": p, "bytes": None} for p in paths]}, features=_features()
    )
    source.map(
        _prepare_batch,
        fn_kwargs={"size": size, "quality": quality},
        batched=True,
        batch_size=64,
        features=_features(),
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        cache_file_name=str(partial / DATA_FILE),
        desc=f"Preparing {len(paths)} images (shorter side {size})",
    )
    # Several processes write one shard each (images_00000_of_00004.arrow, ...), in order.
    files = sorted(p.name for p in partial.glob("images*.arrow"))
    info = {
        "version": CACHE_VERSION,
        "size": size,
        "quality": quality,
        "images": len(paths),
        "files": files,
    }
    (partial / INFO_FILE).write_text(json.dumps(info) + "\n")
    os.replace(partial, entry)  # an interrupted preparation never looks complete
    log.info("prepared image cache %s: %d images at shorter side %d", entry, len(paths), size)
    return _load(entry)


def _load(entry: Path) -> datasets.Dataset:
    import datasets

    info = json.loads((entry / INFO_FILE).read_text())
    shards = [datasets.Dataset.from_file(str(entry / name)) for name in info["files"]]
    return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)


def with_prepared_images(
    table: datasets.Dataset,
    cache_dir: str | Path,
    size: int = 256,
    quality: int = 95,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """A record table whose ``image`` cells hold the prepared bytes; ``target`` is unchanged."""
    import datasets

    paths = [cell["path"] for cell in table["image"]]
    images = prepare_images(paths, cache_dir, size, quality, num_proc)
    return datasets.concatenate_datasets([images, table.remove_columns("image")], axis=1)


def main(argv: Sequence[str] | None = None) -> None:
    from cssa_lightning.data.convert import HelpWithDefaults

    parser = argparse.ArgumentParser(
        prog="cssa prepare",
        description=__doc__.splitlines()[0],
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("sources", nargs="+", help="image folders (metadata.jsonl) or CSV files")
    parser.add_argument("--cache_dir", required=True, help="the data module's image_cache")
    parser.add_argument("--size", type=int, default=256, help="shorter side (image_cache_size)")
    parser.add_argument("--num_proc", type=int, default=1, help="preparing processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cssa_lightning.data.records import read_source

    try:
        for source in args.sources:
            paths = [str(record.path) for record in read_source(source)]
            prepare_images(paths, args.cache_dir, args.size, num_proc=args.num_proc)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
