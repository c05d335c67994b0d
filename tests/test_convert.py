import json

from PIL import Image

from cssa_lightning.convert import main
from cssa_lightning.records import build_record_table, read_source, resolve_class_names


def test_coco_conversion_loads(tmp_path):
    images = tmp_path / "train2014"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    annotations = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3},
            {"id": 11, "image_id": 1, "category_id": 1},
            {"id": 12, "image_id": 1, "category_id": 3},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    out = tmp_path / "coco"
    main(["coco", "--annotations", str(path), "--images", str(images), "--out", str(out)])
    records = read_source(out)
    assert resolve_class_names(out, records) == ["person", "dog"]  # category-id order
    table = build_record_table(records, ["person", "dog"])
    assert table["target"] == [[1, 1], [0, 0]]


def test_voc_conversion(tmp_path):
    from cssa_lightning.convert import VOC_CLASSES

    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for image in ("x", "y"):
        Image.new("RGB", (8, 8)).save(root / "JPEGImages" / f"{image}.jpg")
    for name in VOC_CLASSES:
        flags = {"cat": "x 1\ny 0\n", "dog": "x -1\ny 1\n"}.get(name, "x -1\ny -1\n")
        (root / "ImageSets" / "Main" / f"{name}_train.txt").write_text(flags)
    out = tmp_path / "voc"
    main(["voc", "--root", str(root), "--out", str(out)])
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert [x["labels"] for x in lines] == [["cat"], ["dog"]]
