"""Convert public multi-label datasets to the package's image-folder format.

Writes ``metadata.jsonl`` (``file_name`` relative to the output folder, ``labels``) and
``classes.txt`` into an output folder, leaving the images where they are::

    python -m cssa_lightning.convert coco --annotations instances_train2014.json \\
        --images train2014 --out data/coco/train
    python -m cssa_lightning.convert voc --root VOCdevkit/VOC2012 --split train --out data/voc/train
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor"
).split()


def write_image_folder(
    out: Path, items: Sequence[tuple[Path, list[str]]], class_names: Sequence[str]
) -> Path:
    """Write ``metadata.jsonl`` and ``classes.txt`` for ``(image path, labels)`` items."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metadata.jsonl").open("w", encoding="utf-8") as handle:
        for path, labels in items:
            name = os.path.relpath(path.resolve(), out.resolve())
            handle.write(json.dumps({"file_name": name, "labels": labels}) + "\n")
    (out / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    return out


def coco_items(annotations: Path, images: Path) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """Images of a COCO ``instances_*.json`` with the category names they contain.

    Images without any annotation are kept with no label (they are real negatives).
    """
    data = json.loads(annotations.read_text(encoding="utf-8"))
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in categories}
    labels: dict[int, set[str]] = {image["id"]: set() for image in data["images"]}
    for annotation in data["annotations"]:
        if annotation["image_id"] not in labels:
            raise ValueError(f"{annotations}: annotation {annotation['id']} names unknown image")
        labels[annotation["image_id"]].add(names[annotation["category_id"]])
    class_names = [c["name"] for c in categories]
    items = [
        (images / image["file_name"], [n for n in class_names if n in labels[image["id"]]])
        for image in data["images"]
    ]
    return items, class_names


def voc_items(root: Path, split: str) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """Pascal VOC images of ``split`` from ``ImageSets/Main/{class}_{split}.txt`` (1 = present).

    ``0`` (difficult only) and ``-1`` count as absent, as in the usual multi-label protocol.
    """
    present: dict[str, list[str]] = {}
    for name in VOC_CLASSES:
        listing = root / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing} does not exist")
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{listing}:{number}: expected 'image_id flag', got {line!r}")
            labels = present.setdefault(fields[0], [])
            if fields[1] == "1":
                labels.append(name)
    items = [(root / "JPEGImages" / f"{image}.jpg", labels) for image, labels in present.items()]
    return items, list(VOC_CLASSES)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="dataset", required=True)
    coco = commands.add_parser("coco", help="COCO instances json")
    coco.add_argument("--annotations", type=Path, required=True)
    coco.add_argument("--images", type=Path, required=True)
    coco.add_argument("--out", type=Path, required=True)
    voc = commands.add_parser("voc", help="Pascal VOC ImageSets/Main")
    voc.add_argument("--root", type=Path, required=True)
    voc.add_argument("--split", default="train")
    voc.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.dataset == "coco":
        items, class_names = coco_items(args.annotations, args.images)
    else:
        items, class_names = voc_items(args.root, args.split)
    out = write_image_folder(args.out, items, class_names)
    print(f"wrote {len(items)} images, {len(class_names)} classes to {out}")


if __name__ == "__main__":
    main()
