"""Data sources -> one record table: an image reference and a multi-hot target per image.

Every source (an ``imagefolder`` directory with ``metadata.jsonl``, or a CSV of
``path,labels``) becomes the same Hugging Face ``datasets.Dataset`` with two columns:

- ``image``: ``datasets.Image(decode=False)``, i.e. ``{"path": ..., "bytes": None}``; images are
  decoded lazily by :func:`load_image` so a broken file is reported by name;
- ``target``: a fixed-length list of ``C`` uint8 values over the ordered class names.

Parsing is done here rather than by ``load_dataset("imagefolder")`` so that every problem is
reported with the file and line it comes from.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from cssa_lightning.progress import track

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.txt"
CSV_LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class RawRecord:
    """One image as listed by a source, before class names are mapped to indices."""

    path: Path
    labels: tuple[str, ...]
    where: str  # "file:line", for error messages


def read_source(source: str | Path) -> list[RawRecord]:
    """Read the image list of an ``imagefolder`` directory or a CSV file.

    Args:
        source: A directory holding ``metadata.jsonl`` (one JSON object per line with
            ``file_name`` and ``labels``, a list of class names), or a ``.csv`` file with a
            header ``path,labels`` where ``labels`` joins class names with ``|``. Relative image
            paths are resolved against the directory of the metadata file.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: The source, or an image it lists, does not exist.
        ValueError: A line is malformed, or the source lists no image.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        records = list(_read_jsonl(source / METADATA_FILE))
    elif source.suffix.lower() == ".csv" and source.is_file():
        records = list(_read_csv(source))
    elif not source.exists():
        raise FileNotFoundError(f"data source {source} does not exist")
    else:
        raise ValueError(
            f"data source {source}: expected a directory with {METADATA_FILE} or a .csv file"
        )
    if not records:
        raise ValueError(f"data source {source} lists no image")
    missing = [r for r in track(records, f"checking {source.name}") if not r.path.is_file()]
    if missing:
        first = missing[0]
        raise FileNotFoundError(
            f"{first.where}: image {first.path} does not exist "
            f"({len(missing)} of {len(records)} listed images are missing)"
        )
    return records


def _read_jsonl(metadata: Path) -> Iterator[RawRecord]:
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} does not exist: an image folder needs it")
    with metadata.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{metadata}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from error
            if not isinstance(item, dict) or "file_name" not in item or "labels" not in item:
                raise ValueError(f"{where}: expected an object with 'file_name' and 'labels'")
            labels = item["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise ValueError(f"{where}: 'labels' must be a list of class names, got {labels!r}")
            yield RawRecord(metadata.parent / item["file_name"], tuple(labels), where)


def _read_csv(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            raise ValueError(f"{path}:1: expected a header with columns 'path' and 'labels'")
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            if not row["path"]:
                raise ValueError(f"{where}: empty 'path'")
            text = (row["labels"] or "").strip()
            labels = tuple(x.strip() for x in text.split(CSV_LABEL_SEPARATOR)) if text else ()
            yield RawRecord(path.parent / row["path"], labels, where)


def resolve_class_names(source: str | Path, records: Sequence[RawRecord]) -> list[str]:
    """Class order for a source: its ``classes.txt`` if present, else the sorted label union."""
    source = Path(source).expanduser()
    classes_file = (source if source.is_dir() else source.parent) / CLASSES_FILE
    if classes_file.is_file():
        names = [n.strip() for n in classes_file.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(set(names)) != len(names):
            raise ValueError(f"{classes_file}: class names are not unique")
        return names
    names = sorted({label for record in records for label in record.labels})
    log.info("no %s beside %s: using the %d sorted label names", CLASSES_FILE, source, len(names))
    return names


def build_record_table(
    records: Sequence[RawRecord], class_names: Sequence[str]
) -> datasets.Dataset:
    """Map class names to a multi-hot target and build the ``datasets`` record table.

    Raises:
        ValueError: A record names a class that is not in ``class_names``.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    index = {name: i for i, name in enumerate(class_names)}
    targets = np.zeros((len(records), len(class_names)), dtype=np.uint8)
    for row, record in enumerate(track(records, "record table")):
        for label in record.labels:
            if label not in index:
                raise ValueError(
                    f"{record.where}: unknown class name {label!r} "
                    f"(expected one of {len(class_names)} classes, e.g. {list(class_names)[:5]})"
                )
            targets[row, index[label]] = 1
    features = datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "target": datasets.List(datasets.Value("uint8"), length=len(class_names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": [str(r.path) for r in records], "target": targets.tolist()}, features=features
    )


def load_image(image: dict) -> np.ndarray:
    """Decode one ``image`` cell of the record table to an RGB uint8 array (H, W, 3).

    Raises:
        ValueError: The file cannot be decoded as an image.
    """
    path = image.get("path")
    try:
        if image.get("bytes") is not None:
            import io

            pil = Image.open(io.BytesIO(image["bytes"]))
        else:
            pil = Image.open(path)
        return np.asarray(pil.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def split_labeled(
    num_images: int, labeled_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labeled/unlabeled split: a permutation, the first ``floor(p * N)`` labeled.

    Deterministic for a given ``(num_images, labeled_ratio, seed)`` on every machine and process.

    Returns:
        ``(labeled_indices, unlabeled_indices)``, disjoint, together covering ``range(N)``.

    Raises:
        ValueError: ``labeled_ratio`` is outside ``(0, 1]`` or leaves no labeled image.
    """
    if not 0.0 < labeled_ratio <= 1.0:
        raise ValueError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
    permutation = np.random.default_rng(seed).permutation(num_images)
    num_labeled = int(np.floor(labeled_ratio * num_images))
    if num_labeled == 0:
        raise ValueError(
            f"labeled_ratio={labeled_ratio} of {num_images} images leaves no labeled image"
        )
    return np.sort(permutation[:num_labeled]), np.sort(permutation[num_labeled:])
