"""Converters on generated miniatures of the real on-disk formats (COCO, VOC, NUS-WIDE)."""

import json

import pytest
from PIL import Image

from cssa_lightning.data.convert import VOC_CLASSES, main
from cssa_lightning.data.records import build_record_table, read_source, resolve_class_names


def _labels(out) -> list[list[str]]:
    return [json.loads(x)["labels"] for x in (out / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "train2014"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    annotations = {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 5, "file_name": "c.jpg"},
        ],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3},
            {"id": 11, "image_id": 1, "category_id": 1},
            {"id": 12, "image_id": 1, "category_id": 3},
            {"id": 13, "image_id": 5, "category_id": 3},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    return path, images, annotations


def _convert_coco(path, images, out, *extra):
    main(["coco", "--annotations", str(path), "--images", str(images), "--out", str(out), *extra])


def test_coco_conversion_drops_unannotated_images_by_default(tmp_path, coco):
    path, images, _ = coco
    out = tmp_path / "coco"
    _convert_coco(path, images, out)
    records = read_source(out)
    assert [r.path.name for r in records] == ["a.jpg", "c.jpg"]  # b.jpg has no annotation
    assert resolve_class_names(out, records) == ["person", "dog"]  # category-id order
    assert build_record_table(records, ["person", "dog"])["target"] == [[1, 1], [0, 1]]
    kept = tmp_path / "coco_all"
    _convert_coco(path, images, kept, "--keep_unannotated")
    assert _labels(kept) == [["person", "dog"], [], ["dog"]]


def test_converter_never_overwrites_without_the_flag(tmp_path, coco):
    path, images, _ = coco
    out = tmp_path / "coco"
    out.mkdir()
    (out / "metadata.jsonl").write_text("precious\n")
    with pytest.raises(SystemExit, match=r"metadata.jsonl already exists: pass --overwrite"):
        _convert_coco(path, images, out)
    assert (out / "metadata.jsonl").read_text() == "precious\n"
    assert not (out / "classes.txt").exists()
    _convert_coco(path, images, out, "--overwrite")
    assert _labels(out) == [["person", "dog"], ["dog"]]
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda a: a["annotations"].append({"id": 99, "image_id": 1, "category_id": 999}),
            r"annotations\[4\] \(id 99\): unknown category_id 999",
        ),
        (
            lambda a: a["annotations"].append({"id": 98, "image_id": 77, "category_id": 3}),
            r"annotations\[4\] \(id 98\): unknown image_id 77",
        ),
        (
            lambda a: a["images"][1].update(file_name=12),
            r"images\[1\] \(id 2\): 'file_name' must be a string, got 12",
        ),
        (lambda a: a.pop("categories"), r"with a 'categories' list"),
        (
            lambda a: a["images"].append({"id": 1, "file_name": "d.jpg"}),
            r"images\[3\]: duplicate image id 1",
        ),
    ],
)
def test_coco_converter_names_the_bad_entry(tmp_path, coco, corrupt, message):
    path, images, annotations = coco
    corrupt(annotations)
    path.write_text(json.dumps(annotations))
    with pytest.raises(SystemExit, match=f"instances.json: .*{message}"):
        _convert_coco(path, images, tmp_path / "out")


def test_coco_converter_reports_truncated_json(tmp_path, coco):
    path, images, _ = coco
    path.write_text(path.read_text()[:50])
    with pytest.raises(SystemExit, match=r"instances.json: not valid JSON, truncated"):
        _convert_coco(path, images, tmp_path / "out")


# -- VOC ----------------------------------------------------------------------------------------
VOC_TRUTH = {
    # image: [(class, difficult)]
    "000001": [("cat", False), ("dog", True)],
    "000002": [("dog", False), ("pottedplant", False), ("dog", True)],
    "000003": [("person", True)],
}


def _voc_root(tmp_path, lists: bool, xml: bool):
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(VOC_TRUTH) + "\n")
    for image, objects in VOC_TRUTH.items():
        Image.new("RGB", (8, 8)).save(root / "JPEGImages" / f"{image}.jpg")
        if xml:
            body = "".join(
                f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
                f"<difficult>{int(d)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                "<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
                for n, d in objects
            )
            (root / "Annotations" / f"{image}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{image}.jpg</filename>"
                f"<size><width>8</width><height>8</height><depth>3</depth></size>{body}"
                "</annotation>"
            )
    if lists:  # 1 present, 0 difficult only, -1 absent: as the devkit writes them
        for name in VOC_CLASSES:
            lines = []
            for image, objects in VOC_TRUTH.items():
                flags = [d for n, d in objects if n == name]
                flag = "-1" if not flags else ("0" if all(flags) else " 1")
                lines.append(f"{image} {flag}")
            (root / "ImageSets" / "Main" / f"{name}_trainval.txt").write_text("\n".join(lines))
    return root


EXPECTED_VOC = [["cat"], ["dog", "pottedplant"], []]


def _convert_voc(root, out, *extra):
    main(["voc", "--root", str(root), "--split", "trainval", "--output", str(out), *extra])


def test_voc_lists_and_xml_give_the_same_labels(tmp_path):
    both = _voc_root(tmp_path / "both", lists=True, xml=True)
    for source in ("lists", "xml"):
        _convert_voc(both, tmp_path / source, "--labels_from", source)
        assert _labels(tmp_path / source) == EXPECTED_VOC, source


def test_voc_falls_back_to_xml_when_the_class_lists_are_absent(tmp_path):
    root = _voc_root(tmp_path, lists=False, xml=True)
    _convert_voc(root, tmp_path / "out")
    assert _labels(tmp_path / "out") == EXPECTED_VOC
    assert (tmp_path / "out" / "classes.txt").read_text().split("\n")[:-1] == VOC_CLASSES


def test_voc_xml_errors_name_the_file(tmp_path):
    root = _voc_root(tmp_path, lists=False, xml=True)
    (root / "Annotations" / "000002.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(SystemExit, match=r"000002.xml: not valid XML"):
        _convert_voc(root, tmp_path / "out")
    (root / "Annotations" / "000002.xml").write_text(
        "<annotation><object><name>unicorn</name></object></annotation>"
    )
    with pytest.raises(SystemExit, match=r"000002.xml: object 0: unknown VOC class 'unicorn'"):
        _convert_voc(root, tmp_path / "out")
    (root / "Annotations" / "000003.xml").unlink()
    (root / "Annotations" / "000002.xml").unlink()
    with pytest.raises(SystemExit, match=r"000002.xml does not exist \(image 000002"):
        _convert_voc(root, tmp_path / "out")


def test_voc_without_lists_or_split_file_is_a_clear_error(tmp_path):
    root = _voc_root(tmp_path, lists=False, xml=True)
    with pytest.raises(SystemExit, match=r"Main/val.txt does not exist .*aeroplane_val.txt"):
        main(["voc", "--root", str(root), "--split", "val", "--out", str(tmp_path / "out")])


# -- NUS-WIDE -----------------------------------------------------------------------------------
CONCEPTS = ["airport", "animal", "beach", "bear"] + [f"concept{i:02d}" for i in range(77)]


def _nuswide_root(tmp_path, missing: str | None = None):
    root = tmp_path / "NUS-WIDE"
    for folder in ("ConceptsList", "Groundtruth/TrainTestLabels", "ImageList"):
        (root / folder).mkdir(parents=True)
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    listed = ["actor\\0001_2124494179.jpg", "beach\\0002_3311.jpg", "beach\\0003_77.jpg"]
    truth = [{"animal", "bear"}, set(), {"beach"}]  # the second image carries no concept
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(listed) + "\r\n")
    for concept in CONCEPTS:
        column = "".join(f"{int(concept in t)} \n" for t in truth)  # trailing space, as shipped
        path = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_Train.txt"
        path.write_text(column)
    for line in listed:
        if line != missing:
            path = root / "Flickr" / line.replace("\\", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
    return root


def _convert_nuswide(root, out, *extra):
    main(
        ["nuswide", "--root", str(root), "--images", str(root / "Flickr"), "--out", str(out)]
        + list(extra)
    )


def test_nuswide_drops_images_without_a_concept_by_default(tmp_path, capsys):
    root = _nuswide_root(tmp_path)
    _convert_nuswide(root, tmp_path / "out")
    assert "3 listed, 1 without a concept left out, 0 missing" in capsys.readouterr().out
    records = read_source(tmp_path / "out")
    assert [r.path.name for r in records] == ["0001_2124494179.jpg", "0003_77.jpg"]
    assert [list(r.labels) for r in records] == [["animal", "bear"], ["beach"]]
    assert resolve_class_names(tmp_path / "out", records) == CONCEPTS
    _convert_nuswide(root, tmp_path / "all", "--keep_unlabeled")
    assert _labels(tmp_path / "all") == [["animal", "bear"], [], ["beach"]]


def test_nuswide_missing_images_fail_or_are_counted(tmp_path, capsys):
    root = _nuswide_root(tmp_path, missing="beach\\0003_77.jpg")
    with pytest.raises(SystemExit, match=r"TrainImagelist.txt:3: image .*0003_77.jpg does not"):
        _convert_nuswide(root, tmp_path / "out")
    _convert_nuswide(root, tmp_path / "out", "--skip_missing")
    assert "1 missing" in capsys.readouterr().out
    assert _labels(tmp_path / "out") == [["animal", "bear"]]


def test_nuswide_label_file_of_the_wrong_length_is_named(tmp_path):
    root = _nuswide_root(tmp_path)
    bad = root / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Train.txt"
    bad.write_text("0\n1\n")
    with pytest.raises(SystemExit, match=r"Labels_beach_Train.txt: 2 lines for the 3 images"):
        _convert_nuswide(root, tmp_path / "out")
    bad.write_text("0\n2\n1\n")
    with pytest.raises(SystemExit, match=r"Labels_beach_Train.txt:2: expected 0 or 1, got '2'"):
        _convert_nuswide(root, tmp_path / "out")


def test_coco_converter_reports_a_file_that_is_not_utf8(tmp_path, coco):
    path, images, annotations = coco
    path.write_bytes(json.dumps(annotations).encode("utf-16"))
    with pytest.raises(SystemExit, match=r"instances.json: not UTF-8 text"):
        _convert_coco(path, images, tmp_path / "out")


@pytest.mark.parametrize(
    ("dataset", "explained"),
    [
        ("coco", ["an instances json", "the folder of its images", "the image folder to write"]),
        ("voc", ["e.g. VOCdevkit/VOC2007", "the ImageSets/Main split", "(default: train)"]),
        ("nuswide", ["the downloaded Flickr folder", "the split's image list", "official split"]),
    ],
)
def test_every_convert_option_is_explained(dataset, explained, capsys):
    with pytest.raises(SystemExit) as done:
        main([dataset, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in explained:
        assert phrase in text, phrase
    assert "(default: None)" not in text and "(default: False)" not in text
