"""Convert public multi-label datasets to the package's image-folder format.

Writes ``metadata.jsonl`` (``file_name`` relative to the output folder, ``labels``) and
``classes.txt`` (the datasets' own class names) into an output folder, leaving the images where
they are. Existing outputs are only replaced with ``--overwrite``::

    cssa convert coco --annotations instances_train2014.json \\
        --images train2014 --out data/coco/train
    cssa convert voc --root VOCdevkit/VOC2007 --split trainval \\
        --out data/voc2007/trainval
    cssa convert nuswide --root NUS-WIDE --images NUS-WIDE/Flickr \\
        --split train --out data/nuswide/train

Every input is checked; a problem is reported as one line naming the file and the entry.
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

Items = list[tuple[Path, list[str]]]

VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor"
).split()

OUTPUT_FILES = ("metadata.jsonl", "classes.txt")


def write_image_folder(
    out: Path,
    items: Sequence[tuple[Path, list[str]]],
    class_names: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Write ``metadata.jsonl`` and ``classes.txt`` for ``(image path, labels)`` items.

    Each file is written to a temporary name and renamed, so an interrupted conversion never
    leaves a truncated file under the final name.

    Raises:
        FileExistsError: An output file exists and ``overwrite`` is false.
    """
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists: pass --overwrite to replace "
            f"{' and '.join(p.name for p in existing)} in {out}"
        )
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, labels in items:
        name = os.path.relpath(path.resolve(), out.resolve())
        lines.append(json.dumps({"file_name": name, "labels": labels}) + "\n")
    _write_atomic(out / "metadata.jsonl", "".join(lines))
    _write_atomic(out / "classes.txt", "".join(f"{name}\n" for name in class_names))
    return out


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# -- COCO ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON, truncated or corrupt ({error})") from error


def _entries(data: Any, key: str, path: Path, fields: dict[str, type | tuple]) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a COCO instances file with a '{key}' list")
    entries = data[key]
    for position, entry in enumerate(entries):
        where = f"{path}: {key}[{position}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {entry!r}")
        for field, kind in fields.items():
            value = entry.get(field)
            # bool is an int in Python, never a valid id.
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"{where} (id {entry.get('id')!r}): '{field}' must be "
                    f"{'a string' if kind is str else 'an integer'}, got {value!r}"
                )
    return entries


def coco_items(
    annotations: Path, images: Path, keep_unannotated: bool = False
) -> tuple[Items, list[str]]:
    """Images of a COCO ``instances_*.json`` with the category names they contain.

    Args:
        annotations: The ``instances_*.json`` file.
        images: The folder holding the images (``file_name`` is relative to it).
        keep_unannotated: Keep images with no annotation (as images with no label). ``False``
            drops them, as the published SSMLL splits do (82,081 train2014 and 40,137 val2014
            images out of 82,783 and 40,504).

    Returns:
        ``(items, class_names)``, classes in category-id order.

    Raises:
        ValueError: The file is not valid JSON, or an entry is malformed or names an unknown
            image or category (the message names the entry).
    """
    data = _read_json(annotations)
    categories = _entries(data, "categories", annotations, {"id": int, "name": str})
    image_entries = _entries(data, "images", annotations, {"id": int, "file_name": str})
    annotation_entries = _entries(
        data, "annotations", annotations, {"image_id": int, "category_id": int}
    )
    names = {}
    for position, category in enumerate(categories):
        if category["id"] in names or category["name"] in names.values():
            raise ValueError(
                f"{annotations}: categories[{position}]: duplicate id or name "
                f"({category['id']}, {category['name']!r})"
            )
        names[category["id"]] = category["name"]
    labels: dict[int, set[str]] = {}
    for position, image in enumerate(image_entries):
        if image["id"] in labels:
            raise ValueError(f"{annotations}: images[{position}]: duplicate image id {image['id']}")
        labels[image["id"]] = set()
    for position, annotation in enumerate(annotation_entries):
        where = f"{annotations}: annotations[{position}] (id {annotation.get('id')!r})"
        if annotation["image_id"] not in labels:
            raise ValueError(f"{where}: unknown image_id {annotation['image_id']}")
        if annotation["category_id"] not in names:
            raise ValueError(
                f"{where}: unknown category_id {annotation['category_id']} "
                f"(the file defines {len(names)} categories)"
            )
        labels[annotation["image_id"]].add(names[annotation["category_id"]])
    class_names = [names[i] for i in sorted(names)]
    items = [
        (images / image["file_name"], [n for n in class_names if n in labels[image["id"]]])
        for image in image_entries
        if keep_unannotated or labels[image["id"]]
    ]
    return items, class_names


# -- Pascal VOC ---------------------------------------------------------------------------------
def _class_lists(root: Path, split: str) -> list[Path]:
    return [root / "ImageSets" / "Main" / f"{name}_{split}.txt" for name in VOC_CLASSES]


def voc_items(
    root: Path, split: str, labels_from: Literal["auto", "lists", "xml"] = "auto"
) -> tuple[Items, list[str]]:
    """Pascal VOC images of ``split`` with the classes present in each.

    Labels come from the per-class lists ``ImageSets/Main/{class}_{split}.txt`` (1 = present;
    0 = difficult only and -1 count as absent, the usual multi-label protocol) or from the
    ``Annotations/{image}.xml`` files of the images in ``ImageSets/Main/{split}.txt`` (a class
    is present when one of its objects is not marked difficult: the same labels).
    ``labels_from="auto"`` reads the lists when all 20 exist, else the XML.
    """
    lists = _class_lists(root, split)
    if labels_from == "lists" or (labels_from == "auto" and all(p.is_file() for p in lists)):
        return _voc_from_lists(root, lists), list(VOC_CLASSES)
    return _voc_from_xml(root, split), list(VOC_CLASSES)


def _voc_from_lists(root: Path, lists: list[Path]) -> Items:
    present: dict[str, list[str]] = {}
    for name, listing in zip(VOC_CLASSES, lists, strict=True):
        if not listing.is_file():
            raise FileNotFoundError(f"{listing} does not exist")
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                raise ValueError(f"{listing}:{number}: expected 'image_id 1|0|-1', got {line!r}")
            labels = present.setdefault(fields[0], [])
            if fields[1] == "1":
                labels.append(name)
    return [(root / "JPEGImages" / f"{image}.jpg", labels) for image, labels in present.items()]


def _voc_from_xml(root: Path, split: str) -> Items:
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(
            f"{listing} does not exist (nor the per-class lists such as "
            f"{_class_lists(root, split)[0].name}): cannot tell which images form '{split}'"
        )
    items = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 1:
            raise ValueError(f"{listing}:{number}: expected one image id, got {line!r}")
        items.append((root / "JPEGImages" / f"{fields[0]}.jpg", _voc_xml_labels(root, fields[0])))
    return items


def _voc_xml_labels(root: Path, image: str) -> list[str]:
    path = root / "Annotations" / f"{image}.xml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (image {image} of the split)")
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise ValueError(f"{path}: not valid XML ({error})") from error
    present = set()
    for position, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: object {position}: unknown VOC class {name!r}")
        if (obj.findtext("difficult") or "0").strip() != "1":
            present.add(name)
    return [name for name in VOC_CLASSES if name in present]


# -- NUS-WIDE -----------------------------------------------------------------------------------
def nuswide_items(
    root: Path,
    images: Path,
    split: Literal["train", "test"],
    image_list: Path | None = None,
    keep_unlabeled: bool = False,
    skip_missing: bool = False,
) -> tuple[Items, list[str], dict[str, int]]:
    """NUS-WIDE images of ``split`` with their concepts among the 81 of the ground truth.

    Reads ``ConceptsList/Concepts81.txt``, the image list (``ImageList/TrainImagelist.txt`` or
    ``TestImagelist.txt``, lines such as ``actor\\0001_2124494179.jpg`` relative to ``images``)
    and ``Groundtruth/TrainTestLabels/Labels_{concept}_{Train|Test}.txt`` (one 0/1 per image,
    in image-list order).

    Args:
        root: The NUS-WIDE folder (``ConceptsList``, ``Groundtruth``, ``ImageList``).
        images: The folder of the downloaded images (``Flickr``).
        split: ``train`` or ``test``.
        image_list: The image list; ``None`` reads it from ``root/ImageList``.
        keep_unlabeled: Keep images with none of the 81 concepts. ``False`` drops them (about
            a fifth of the images), as the usual multi-label protocol on NUS-WIDE does.
        skip_missing: Drop listed images that are not in ``images`` (Flickr downloads are often
            incomplete) instead of failing; the count is returned.

    Returns:
        ``(items, class_names, counts)``; ``counts`` has ``listed``, ``unlabeled`` (dropped or
        kept) and ``missing``.
    """
    concepts_file = root / "ConceptsList" / "Concepts81.txt"
    if not concepts_file.is_file():
        raise FileNotFoundError(f"{concepts_file} does not exist")
    concepts = [c.strip() for c in concepts_file.read_text(encoding="utf-8").splitlines()]
    concepts = [c for c in concepts if c]
    if len(set(concepts)) != len(concepts) or not concepts:
        raise ValueError(f"{concepts_file}: expected unique concept names, one a line")
    tag = split.capitalize()
    image_list = image_list or root / "ImageList" / f"{tag}Imagelist.txt"
    if not image_list.is_file():
        raise FileNotFoundError(f"{image_list} does not exist (set --image_list)")
    names = [line.strip() for line in image_list.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    for number, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"{image_list}:{number}: empty line inside the image list")
    flags = []
    for concept in concepts:
        path = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{tag}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (concept {concept!r})")
        column = [line.strip() for line in path.read_text().splitlines()]
        while column and not column[-1]:
            column.pop()
        if len(column) != len(names):
            raise ValueError(
                f"{path}: {len(column)} lines for the {len(names)} images of {image_list}"
            )
        for number, value in enumerate(column, start=1):
            if value not in ("0", "1"):
                raise ValueError(f"{path}:{number}: expected 0 or 1, got {value!r}")
        flags.append(column)
    items: Items = []
    counts = {"listed": len(names), "unlabeled": 0, "missing": 0}
    for row, name in enumerate(names):
        labels = [c for c, column in zip(concepts, flags, strict=True) if column[row] == "1"]
        if not labels:
            counts["unlabeled"] += 1
            if not keep_unlabeled:
                continue
        path = images / Path(*name.replace("\\", "/").split("/"))
        if not path.is_file():
            counts["missing"] += 1
            if skip_missing:
                continue
            raise FileNotFoundError(
                f"{image_list}:{row + 1}: image {path} does not exist "
                "(pass --skip_missing to leave out images missing from the download)"
            )
        items.append((path, labels))
    return items, concepts, counts


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines that show an option's default, unless it has none worth showing (a required
    option, a flag, or no default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cssa convert", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="dataset", required=True)
    defaults = HelpWithDefaults
    coco = commands.add_parser("coco", help="COCO instances json", formatter_class=defaults)
    coco.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="an instances json, e.g. annotations/instances_train2014.json",
    )
    coco.add_argument(
        "--images", type=Path, required=True, help="the folder of its images, e.g. train2014"
    )
    coco.add_argument(
        "--keep_unannotated",
        action="store_true",
        help="keep images without any annotation (dropped by default, as in the SSMLL splits)",
    )
    voc = commands.add_parser(
        "voc", help="Pascal VOC (per-class lists or XML annotations)", formatter_class=defaults
    )
    voc.add_argument("--root", type=Path, required=True, help="e.g. VOCdevkit/VOC2007")
    voc.add_argument(
        "--split", default="train", help="the ImageSets/Main split: train, val, trainval, test"
    )
    voc.add_argument(
        "--labels_from",
        choices=["auto", "lists", "xml"],
        default="auto",
        help="per-class ImageSets lists, Annotations XML, or auto (lists when all exist)",
    )
    nus = commands.add_parser("nuswide", help="NUS-WIDE, 81 concepts", formatter_class=defaults)
    nus.add_argument("--root", type=Path, required=True, help="folder with Groundtruth etc.")
    nus.add_argument("--images", type=Path, required=True, help="the downloaded Flickr folder")
    nus.add_argument(
        "--split", choices=["train", "test"], default="train", help="the official split"
    )
    nus.add_argument(
        "--image_list",
        type=Path,
        default=None,
        help="the split's image list (default: ImageList/{Train,Test}Imagelist.txt under --root)",
    )
    nus.add_argument(
        "--keep_unlabeled",
        action="store_true",
        help="keep images with none of the 81 concepts (dropped by default)",
    )
    nus.add_argument("--skip_missing", action="store_true", help="leave out missing images")
    for command in (coco, voc, nus):
        command.add_argument(
            "--output",
            "--out",  # the name before every command said --output
            dest="out",
            type=Path,
            required=True,
            help="the image folder to write",
        )
        command.add_argument(
            "--overwrite", action="store_true", help="replace an existing conversion in --output"
        )
    args = parser.parse_args(argv)
    try:
        convert(args)
    except (ValueError, OSError) as error:
        # One line naming the file and entry at fault, not a traceback.
        raise SystemExit(f"error: {error}") from error


def convert(args: argparse.Namespace) -> None:
    """Run the conversion that ``main`` parsed."""
    note = ""
    if args.dataset == "coco":
        items, class_names = coco_items(args.annotations, args.images, args.keep_unannotated)
        if not args.keep_unannotated:
            note = " (images without annotation left out)"
    elif args.dataset == "voc":
        items, class_names = voc_items(args.root, args.split, args.labels_from)
    else:
        items, class_names, counts = nuswide_items(
            args.root,
            args.images,
            args.split,
            args.image_list,
            args.keep_unlabeled,
            args.skip_missing,
        )
        note = (
            f" ({counts['listed']} listed, {counts['unlabeled']} without a concept "
            f"{'kept' if args.keep_unlabeled else 'left out'}, {counts['missing']} missing)"
        )
    out = write_image_folder(args.out, items, class_names, overwrite=args.overwrite)
    print(f"wrote {len(items)} images, {len(class_names)} classes to {out}{note}")


if __name__ == "__main__":
    main()
