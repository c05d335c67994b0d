"""A seeded fuzzer over the user's files: metadata.jsonl, CSV and classes.txt (random bytes,
truncated lines, mixed encodings, damaged JSON) and images (truncated, zero bytes, random
bytes, a wrong extension). Every case either reads (a documented success) or raises one
``ValueError`` / ``OSError`` line that names the file; never another exception, a multi-line
message or a hang. Checkpoints have their own fuzzer in ``test_safe_loading.py``."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cssa_lightning.data.records import load_image, read_source, resolve_class_names

CASES = 200
CLASSES = ["red", "green", "blue", "cat dog", "café"]


def _good_files(folder: Path) -> dict[str, bytes]:
    """A valid image folder: two images, metadata.jsonl, a CSV and classes.txt."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "images" / name)
    lines = [
        {"file_name": "images/a.png", "labels": ["red", "café"]},
        {"file_name": "images/b.png", "labels": ["cat dog"]},
    ]
    return {
        "metadata.jsonl": "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode(),
        "list.csv": "path,labels\nimages/a.png,red|café\nimages/b.png,cat dog\n".encode(),
        "classes.txt": ("\n".join(CLASSES) + "\n").encode(),
    }


def _damage(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["random", "truncate", "flip", "latin1", "utf16", "splice", "json"])
    if kind == "random":
        return rng.randbytes(rng.randrange(0, 200))
    if kind == "truncate":
        return data[: rng.randrange(len(data) + 1)]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "latin1":
        return data.decode("utf-8").encode("latin-1", errors="replace")
    if kind == "utf16":
        return data.decode("utf-8").encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    if kind == "splice":  # a line of random bytes in the middle
        lines = data.split(b"\n")
        lines.insert(rng.randrange(len(lines) + 1), rng.randbytes(rng.randrange(1, 40)))
        return b"\n".join(lines)
    # damaged JSON / CSV structure: a bracket, quote or separator removed or added
    out = bytearray(data)
    position = rng.randrange(len(out) + 1)
    if rng.random() < 0.5 and position < len(out):
        del out[position]
    else:
        out[position:position] = rng.choice([b"{", b"]", b'"', b",", b"|", b"\n", b"\x00"])
    return bytes(out)


def _one_line_naming(error: BaseException, *names: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert any(name in message for name in names), message


@pytest.mark.parametrize("target", ["metadata.jsonl", "list.csv", "classes.txt"])
def test_damaged_text_files_read_or_fail_in_one_line(tmp_path, target):
    folder = tmp_path / "data"
    good = _good_files(folder)
    rng = random.Random(f"text-fuzz-{target}")
    outcomes = {"read": 0, "refused": 0}
    for _ in range(CASES):
        for name, data in good.items():
            (folder / name).write_bytes(_damage(data, rng) if name == target else data)
        source = folder / "list.csv" if target == "list.csv" else folder
        try:
            records = read_source(source)
            resolve_class_names(source, records)
        except (ValueError, OSError) as error:
            _one_line_naming(error, str(folder), "data source")
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
    assert outcomes["refused"] > CASES // 4, outcomes


def _damaged_image(rng: random.Random) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    fmt = rng.choice(["PNG", "JPEG", "BMP"])
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 255, (16, 16, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    data = buffer.getvalue()
    kind = rng.choice(["truncate", "zero", "random", "wrong_extension", "flip"])
    suffix = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}[fmt]
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "zero":
        data = b""
    elif kind == "random":
        data = rng.randbytes(rng.randrange(1, 500))
    elif kind == "wrong_extension":
        suffix = rng.choice([".png", ".jpg", ".gif", ".txt"])
    else:
        out = bytearray(data)
        out[rng.randrange(len(out))] ^= 0xFF
        data = bytes(out)
    return suffix, data


def test_damaged_images_decode_or_fail_in_one_line(tmp_path):
    rng = random.Random("image-fuzz")
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(CASES):
        suffix, data = _damaged_image(rng)
        path = tmp_path / f"case{case}{suffix}"
        path.write_bytes(data)
        try:
            image = load_image({"path": str(path)})
        except ValueError as error:
            _one_line_naming(error, str(path))
            outcomes["refused"] += 1
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            outcomes["decoded"] += 1
    assert outcomes["refused"] > CASES // 4 and outcomes["decoded"] > 0, outcomes
