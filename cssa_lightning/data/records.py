"""Data sources -> one record table: an image reference and a multi-hot target per image.

Every source (an ``imagefolder`` directory with ``metadata.jsonl``, or a CSV of
``path,labels``) becomes the same Hugging Face ``datasets.Dataset`` with two columns:

- ``image``: ``datasets.Image(decode=False)``, i.e. ``{"path": ..., "bytes": None}``; images are
  decoded lazily by :func:`load_image` so a broken file is reported by name;
- ``target``: a fixed-length list of ``C`` uint8 values over the ordered class names.

Parsing is done here rather than by ``load_dataset("imagefolder")`` so that every problem is
reported with the file and line it comes from.

Text files (``metadata.jsonl``, CSV, ``classes.txt``) are read as UTF-8; a UTF-8 byte-order
mark is dropped, and a file with a UTF-16 or UTF-32 byte-order mark is decoded accordingly.
Any other file that is not valid UTF-8 (Latin-1, UTF-16 without a byte-order mark) is rejected
with one line naming the file, the line and the expected encoding.

An image listed twice by one source (the same path after normalisation) is kept once: identical
repeats are dropped with one warning giving their count, repeats with different labels are an
error naming both lines (they would otherwise be able to land in both the labeled and the
unlabeled stream with contradicting targets).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
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

# Byte-order marks and the codec that reads a file starting with them (UTF-32 before UTF-16:
# the UTF-32-LE mark starts with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: Path) -> str:
    """The text of ``path``: UTF-8 (with or without a byte-order mark), or UTF-16/32 with one.

    Raises:
        ValueError: The file is not in one of those encodings; the message names the line of
            the first undecodable byte and the expected encoding.
    """
    data = Path(path).read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as error:
                line = data[: error.start].count(b"\n") + 1
                raise ValueError(
                    f"{path}:{line}: starts with a {encoding} byte-order mark but is not valid "
                    f"{encoding} ({error.reason}); save it as UTF-8"
                ) from error
    if b"\x00" in data[:4096]:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: NUL bytes (UTF-16 or UTF-32 without a byte-order mark?); "
            "expected UTF-8 text"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}; Latin-1 or "
            "another legacy encoding?); save the file as UTF-8"
        ) from error


def check_class_names(names: Sequence[str], where: str) -> list[str]:
    """Validate an ordered class list: at least two unique, non-empty names.

    Raises:
        ValueError: Naming ``where`` the list comes from and what is wrong.
    """
    names = list(names)
    if not names:
        raise ValueError(f"{where}: no class names")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{where}: class names must be non-empty strings, got {bad[0]!r}")
    if len(names) < 2:
        raise ValueError(
            f"{where}: one class ({names[0]!r}); multi-label classification needs at least two "
            "(add the classes the images may lack, or a background class)"
        )
    seen: set[str] = set()
    repeated = [n for n in names if n in seen or seen.add(n)]
    if repeated:
        raise ValueError(f"{where}: class names are not unique (repeated: {repeated[:5]})")
    return names


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
    records = merge_duplicates(records)
    missing = [r for r in track(records, f"checking {source.name}") if not r.path.is_file()]
    if missing:
        first = missing[0]
        raise FileNotFoundError(
            f"{first.where}: image {first.path} does not exist "
            f"({len(missing)} of {len(records)} listed images are missing)"
        )
    return records


def merge_duplicates(records: Sequence[RawRecord]) -> list[RawRecord]:
    """Keep the first record of each image; see the module docstring.

    Raises:
        ValueError: An image is listed twice with different labels (both lines named).
    """
    first: dict[str, RawRecord] = {}
    kept: list[RawRecord] = []
    repeated: list[str] = []
    for record in records:
        key = os.path.normcase(os.path.normpath(os.path.abspath(record.path)))
        earlier = first.get(key)
        if earlier is None:
            first[key] = record
            kept.append(record)
        elif set(earlier.labels) == set(record.labels):
            repeated.append(record.where)
        else:
            raise ValueError(
                f"{record.where}: image {record.path} is listed again with different labels "
                f"{sorted(set(record.labels))} (first at {earlier.where} with "
                f"{sorted(set(earlier.labels))}); list each image once with all its labels"
            )
    if repeated:
        log.warning(
            "%d repeated lines with the same image and labels were dropped (first: %s)",
            len(repeated),
            repeated[0],
        )
    return kept


def _read_jsonl(metadata: Path) -> Iterator[RawRecord]:
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} does not exist: an image folder needs it")
    # split("\n"), not splitlines(): a JSON string may hold U+2028 and other line breaks.
    for number, line in enumerate(read_text(metadata).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from error
        if not isinstance(item, dict) or "file_name" not in item or "labels" not in item:
            raise ValueError(f"{where}: expected an object with 'file_name' and 'labels'")
        file_name = item["file_name"]
        if not isinstance(file_name, str) or not file_name.strip():
            raise ValueError(
                f"{where}: 'file_name' must be a non-empty string (a path relative to "
                f"{metadata.parent}), got {file_name!r}"
            )
        labels = item["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{where}: 'labels' must be a list of class names, got {labels!r}")
        yield RawRecord(metadata.parent / file_name, tuple(labels), where)


def _read_csv(path: Path) -> Iterator[RawRecord]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
        raise ValueError(
            f"{path}:1: expected a header with columns 'path' and 'labels', got {reader.fieldnames}"
        )
    for row in reader:
        where = f"{path}:{reader.line_num}"
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
        names = [n.strip() for n in read_text(classes_file).splitlines()]
        names = [n for n in names if n]
        if not names:
            raise ValueError(f"{classes_file}: empty (expected one class name per line)")
        return check_class_names(names, str(classes_file))
    names = sorted({label for record in records for label in record.labels})
    log.info("no %s beside %s: using the %d sorted label names", CLASSES_FILE, source, len(names))
    return check_class_names(names, f"the labels of {source} (no {CLASSES_FILE} beside it)")


def build_record_table(
    records: Sequence[RawRecord], class_names: Sequence[str]
) -> datasets.Dataset:
    """Map class names to a multi-hot target and build the ``datasets`` record table.

    Raises:
        ValueError: A record names a class that is not in ``class_names``.
    """
    check_class_names(class_names, "class_names")
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

    High-bit-depth images are scaled to 8 bits, not clipped: 16-bit grey levels (PIL modes
    ``I;16*``, and ``I`` with values above 255) are divided by 257 so 65535 is white; float
    images (mode ``F``) in [0, 1] are multiplied by 255, other float ranges are clipped to
    [0, 255]. 16-bit RGB files are already reduced to 8 bits by PIL.

    Raises:
        ValueError: The file cannot be decoded as an image, or is larger than PIL's
            decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; raise it for very large
            images you trust).
    """
    path = image.get("path")
    try:
        if image.get("bytes") is not None:
            pil = Image.open(io.BytesIO(image["bytes"]))
        else:
            pil = Image.open(path)
        return to_rgb8(pil)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image {path} is too large to decode safely ({error}); "
            "set PIL.Image.MAX_IMAGE_PIXELS higher if the file is trusted"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def to_rgb8(pil: Image.Image) -> np.ndarray:
    """An RGB uint8 array of any PIL image, scaling high-bit-depth modes (see ``load_image``)."""
    if pil.mode.startswith("I") or pil.mode == "F":
        values = np.asarray(pil, dtype=np.float64)
        if pil.mode.startswith("I;16") or (pil.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0
        elif pil.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(pil.convert("RGB"))


def split_labeled(
    num_images: int, labeled_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labeled/unlabeled split: a permutation, the first ``floor(p * N)`` labeled.

    Deterministic for a given ``(num_images, labeled_ratio, seed)`` on every machine and process.

    Returns:
        ``(labeled_indices, unlabeled_indices)``, disjoint, together covering ``range(N)``.

    Raises:
        ValueError: ``labeled_ratio`` is outside ``(0, 1]`` or leaves no labeled image, or
            ``seed`` is negative.
    """
    if not 0.0 < labeled_ratio <= 1.0:
        raise ValueError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
    check_seed(seed, "split_seed")
    permutation = np.random.default_rng(seed).permutation(num_images)
    num_labeled = int(np.floor(labeled_ratio * num_images))
    if num_labeled == 0:
        raise ValueError(
            f"labeled_ratio={labeled_ratio} of {num_images} images leaves no labeled image"
        )
    return np.sort(permutation[:num_labeled]), np.sort(permutation[num_labeled:])


def check_seed(seed: int, name: str) -> int:
    """``seed`` if it is a non-negative integer (numpy's generators reject others).

    Raises:
        ValueError: Naming the option ``name``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)
