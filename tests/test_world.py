"""Tests of the synthetic worlds v2 and v3 (cssa_lightning.synthetic): definitions, statistics,
files."""

from __future__ import annotations

import ast
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cssa_lightning.methods.contexts import cluster_contexts, cooccurrence_affinity
from cssa_lightning.synthetic import world
from cssa_lightning.synthetic.captions import make_caption, split_words, vocabulary
from cssa_lightning.synthetic.contexts import (
    CONTEXT_BY_NAME,
    CONTEXT_NAMES,
    CONTEXTS,
    NEUTRAL_STYLES,
    contexts_of,
)
from cssa_lightning.synthetic.render import render_background, render_image
from cssa_lightning.synthetic.shapes import CLASS_NAMES, CONFUSABLE_PAIRS
from cssa_lightning.synthetic.world import (
    ImageSpec,
    ensure_world,
    generate_world,
    image_rng,
    sample_image_spec,
)

NUM = 40
PACKAGE = Path(__file__).parent.parent / "cssa_lightning"


@pytest.fixture(scope="module")
def specs() -> list[ImageSpec]:
    """3,000 train specs, sampled without rendering."""
    return [sample_image_spec(image_rng(0, "train", i)) for i in range(3000)]


def _targets(specs: list[ImageSpec]) -> np.ndarray:
    index = {name: k for k, name in enumerate(CLASS_NAMES)}
    y = np.zeros((len(specs), len(CLASS_NAMES)))
    for i, spec in enumerate(specs):
        y[i, [index[n] for n in spec.labels]] = 1
    return y


def _read_metadata(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- definitions ----------------------------------------------------------------------------


def test_definitions() -> None:
    assert len(CLASS_NAMES) >= 44 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert all(name.isalpha() and name.islower() for name in (*CLASS_NAMES, *CONTEXT_NAMES))
    assert 7 <= len(CONTEXTS) <= 9
    membership = Counter(c for context in CONTEXTS for c in context.classes)
    assert set(membership) == set(CLASS_NAMES), "every class belongs to a context"
    assert sum(n >= 2 for n in membership.values()) >= 10, "classes shared across contexts"
    assert all(7 <= len(context.classes) <= 10 for context in CONTEXTS)
    assert len(CONFUSABLE_PAIRS) >= 7
    for a, b in CONFUSABLE_PAIRS:
        assert a in CLASS_NAMES and b in CLASS_NAMES and a != b


def test_core_never_imports_the_synthetic_package() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                assert not any("synthetic" in n for n in names), path.name
    # The synthetic package's own __init__ is light: only the standard library at import,
    # and the core's helper for lazy attributes (itself only the standard library).
    standard = {"__future__", "collections", "importlib", "pathlib", "typing"}
    for module in ("synthetic/__init__.py", "_lazy.py"):
        tree = ast.parse((PACKAGE / module).read_text())
        imported = {
            n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
            for n in tree.body
            if isinstance(n, ast.ImportFrom | ast.Import)
        } - {"cssa_lightning._lazy"}
        assert {name.split(".")[0] for name in imported} <= standard, module


# -- statistics of sampled specs (no rendering) ---------------------------------------------


def test_objects_per_image(specs: list[ImageSpec]) -> None:
    counts = Counter(len(s.objects) for s in specs)
    assert set(counts) == set(range(1, 9))
    assert 3.7 <= np.mean([len(s.objects) for s in specs]) <= 4.4
    assert all(1 <= len(s.labels) <= len(s.objects) for s in specs)


def test_small_objects_and_backgrounds(specs: list[ImageSpec]) -> None:
    objects = [o for s in specs for o in s.objects]
    assert 0.31 <= np.mean([o.small for o in objects]) <= 0.39
    assert all(o.radius <= 0.08 for o in objects if o.small)
    neutral = [s.background == "neutral" for s in specs]
    assert 0.77 <= np.mean(neutral) <= 0.83
    assert {s.style for s in specs if s.background == "neutral"} == set(NEUTRAL_STYLES)


def test_out_of_context_fraction(specs: list[ImageSpec]) -> None:
    classes = {c.name: set(c.classes) for c in CONTEXTS}
    outside = [o.name not in classes[s.context] for s in specs for o in s.objects]
    assert [not o.in_context for s in specs for o in s.objects] == outside
    assert 0.085 <= np.mean(outside) <= 0.115


def test_long_tail(specs: list[ImageSpec]) -> None:
    counts = Counter(label for s in specs for label in s.labels)
    assert set(counts) == set(CLASS_NAMES)
    assert max(counts.values()) >= 15 * min(counts.values())


def test_contexts_are_recoverable_from_cooccurrence(specs: list[ImageSpec]) -> None:
    """Spectral clustering of label co-occurrence finds the defined contexts.

    Purity: each cluster is matched to the context holding most of its classes; a class counts
    as correct if that context contains it. Measured 1.0 on these specs; threshold 0.85.
    """
    affinity = cooccurrence_affinity(_targets(specs))
    clusters = cluster_contexts(affinity, len(CONTEXTS), seed=0)
    correct = 0
    for k in np.unique(clusters):
        members = [CLASS_NAMES[j] for j in np.flatnonzero(clusters == k)]
        correct += max(sum(m in c.classes for m in members) for c in CONTEXTS)
    assert correct / len(CLASS_NAMES) >= 0.85


def _background_accuracy(specs: list[ImageSpec]) -> float:
    """Balanced accuracy of a nearest-centroid rule: background mean colour -> context."""
    features = np.stack([render_background(s, 16)[0].mean((0, 1)) for s in specs])
    labels = np.array([CONTEXT_NAMES.index(s.context) for s in specs])
    half = len(specs) // 2
    centroids = np.stack(
        [features[:half][labels[:half] == k].mean(0) for k in range(len(CONTEXT_NAMES))]
    )
    test, truth = features[half:], labels[half:]
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float(np.mean([np.mean(predicted[truth == k] == k) for k in np.unique(truth)]))


def test_neutral_background_does_not_reveal_the_context(specs: list[ImageSpec]) -> None:
    """Chance balanced accuracy is 1/8; context-style backgrounds show the test has power."""
    neutral = [s for s in specs if s.background == "neutral"]
    assert _background_accuracy(neutral) <= 1 / len(CONTEXTS) + 0.06
    own = [s for s in specs if s.background == "context"]
    assert _background_accuracy(own) >= 0.6


# -- rendering and files ----------------------------------------------------------------------


def test_render_image(specs: list[ImageSpec]) -> None:
    image = render_image(specs[0], 48)
    assert image.mode == "RGB" and image.size == (48, 48)
    assert render_image(specs[0], 48).tobytes() == image.tobytes()
    # Objects actually change the pixels: the same spec without objects differs.
    spec = specs[0]
    empty = dataclasses.replace(spec, objects=(), occluder=None)
    diff = np.abs(np.asarray(render_image(empty, 48), float) - np.asarray(image, float))
    assert diff.mean() > 3
    with pytest.raises(ValueError, match="image_size"):
        render_image(spec, 8)


def test_world_on_disk(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "train", NUM, image_size=32, seed=3)
    assert folder == tmp_path / "v2-train-40-32-s3"
    assert (folder / "classes.txt").read_text().splitlines() == list(CLASS_NAMES)
    records = _read_metadata(folder)
    assert len(records) == NUM
    for i, rec in enumerate(records):
        assert rec["file_name"] == f"images/{i:06d}.png"
        assert 1 <= len(rec["labels"]) <= 8 and len(set(rec["labels"])) == len(rec["labels"])
        assert set(rec["labels"]) <= set(CLASS_NAMES)
        assert rec["context"] in CONTEXT_NAMES and rec["background"] in ("neutral", "context")
        assert "caption" not in rec
    with Image.open(folder / records[0]["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    # Only the finished folder is left behind (no temporary folders).
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_determinism_any_number_of_workers(tmp_path: Path, monkeypatch) -> None:
    a = ensure_world(tmp_path / "a", "val", NUM, seed=1)
    b = ensure_world(tmp_path / "b", "val", NUM, seed=1)
    c = ensure_world(tmp_path / "c", "val", NUM, seed=2)
    assert _folder_bytes(a) == _folder_bytes(b)
    assert (a / "metadata.jsonl").read_bytes() != (c / "metadata.jsonl").read_bytes()
    # Two processes, each making several chunks, give the same files as one process.
    monkeypatch.setattr(world, "_CHUNK", 7)
    d = tmp_path / "d"
    generate_world(d, "val", NUM, seed=1, workers=2)
    assert _folder_bytes(d) == _folder_bytes(a)


def test_splits_are_independent_streams() -> None:
    def first_images(split: str) -> set[bytes]:
        return {
            render_image(sample_image_spec(image_rng(0, split, i)), 32).tobytes() for i in range(8)
        }

    images = [first_images(split) for split in world.SPLITS]
    assert sum(len(s) for s in images) == len(set().union(*images)) == 8 * len(world.SPLITS)


def test_ensure_world_cache_is_atomic(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "train", 5)
    marker = folder / "images/000000.png"
    marker.write_bytes(b"kept")
    assert ensure_world(tmp_path, "train", 5) == folder
    assert marker.read_bytes() == b"kept"
    # A half-written folder (no metadata) is not trusted: it is regenerated.
    (folder / "metadata.jsonl").unlink()
    assert ensure_world(tmp_path, "train", 5) == folder
    assert marker.read_bytes() != b"kept" and len(_read_metadata(folder)) == 5
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_pretrain_has_captions(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path, "pretrain", 10, image_size=32)
    for rec in _read_metadata(folder):
        assert rec["caption"] == rec["captions"][0]
        assert len(rec["captions"]) == world.NUM_PRETRAIN_CAPTIONS
        for caption in rec["captions"]:
            mentioned = set(split_words(caption)) & set(CLASS_NAMES)
            assert mentioned and mentioned <= set(rec["labels"])


# -- captions -------------------------------------------------------------------------------


def test_captions_and_vocabulary(specs: list[ImageSpec]) -> None:
    vocab = set(vocabulary())
    assert all(word.isalpha() and word.islower() for word in vocab)
    rng = np.random.default_rng(0)
    used: set[str] = set()
    with_setting = mentions = small_mentions = small_total = large_total = 0
    for spec in specs[:2000]:
        names = [o.name for o in spec.objects]
        caption = make_caption(names, spec.context, rng, [o.small for o in spec.objects])
        words = split_words(caption)
        assert set(words) <= vocab, caption
        assert set(words) & set(CLASS_NAMES) <= set(names)
        used |= set(words)
        with_setting += any(s in caption for s in CONTEXT_BY_NAME[spec.context].settings) or (
            spec.context in words
        )
        if len(set(names)) == len(names):  # unique classes: mentions are countable
            for o in spec.objects:
                hit = o.name in words
                if o.small:
                    small_total, small_mentions = small_total + 1, small_mentions + hit
                else:
                    large_total, mentions = large_total + 1, mentions + hit
    assert used | set(CLASS_NAMES) | set(CONTEXT_NAMES) == vocab, "unused vocabulary words"
    assert 0.3 <= with_setting / 2000 <= 0.5
    assert small_mentions / small_total < mentions / large_total - 0.1
    for name in CLASS_NAMES:
        for template in ("a photo of a {}.", "a picture of a {}.", "a photo of the {}."):
            assert set(split_words(template.format(name))) <= vocab


def test_captions_vary() -> None:
    rng = np.random.default_rng(0)
    texts = {make_caption(["apple", "cup", "spoon"], "kitchen", rng) for _ in range(300)}
    assert len(texts) > 60
    assert any("kitchen" in c for c in texts) and any("kitchen" not in c for c in texts)


def test_bad_caption_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="objects"):
        make_caption([], "kitchen", rng)
    with pytest.raises(ValueError, match="objects"):
        make_caption(["dragon"], "kitchen", rng)
    with pytest.raises(ValueError, match="context"):
        make_caption(["apple"], "moon", rng)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"split": "valid"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"image_size": 4}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"version": "v9"}, "version"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, argument: str) -> None:
    args = {"root": tmp_path, "split": "train", "num_images": 4} | kwargs
    with pytest.raises(ValueError, match=argument):
        ensure_world(**args)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world.main(["--root", str(tmp_path), "--split", "test", "--num-images", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "v2-test-3-64-s0")
    assert out[1].startswith("took ")


def test_world_datamodule_writes_val_split(tmp_path: Path) -> None:
    from cssa_lightning.synthetic import WorldDataModule

    data = WorldDataModule(root=str(tmp_path), num_train=12, num_val=6, num_test=5)
    assert data.class_names == list(CLASS_NAMES)
    assert Path(data.val_source) == tmp_path / "v2-val-6-64-s0"
    assert Path(data.test_source) == tmp_path / "v2-test-5-64-s0"
    data.setup("fit")
    assert len(data.val_table) == 6 and len(data.test_table) == 5
    assert (
        WorldDataModule(root=str(tmp_path), num_train=12, num_val=0, num_test=5).val_source is None
    )


# -- world v3: visible objects, a weaker text prior -------------------------------------------


@pytest.fixture(scope="module")
def v3_specs() -> list[ImageSpec]:
    return [sample_image_spec(image_rng(0, "train", i), world.V3) for i in range(3000)]


def test_v3_objects_are_visible(v3_specs: list[ImageSpec]) -> None:
    counts = Counter(len(s.objects) for s in v3_specs)
    assert set(counts) == set(range(1, 7))
    # Every object at least 1.5 patches of 8 px across at the benchmark's 64 px.
    diameters = [2 * o.radius * 64 for s in v3_specs for o in s.objects]
    assert min(diameters) >= 12.0
    assert 0.26 <= np.mean([o.small for s in v3_specs for o in s.objects]) <= 0.34
    # Same contexts, co-occurrence and long tail as v2.
    labels = Counter(label for s in v3_specs for label in s.labels)
    assert set(labels) == set(CLASS_NAMES)


def test_v3_captions_rarely_name_the_rare_classes(tmp_path: Path) -> None:
    style = world.V3.captions
    assert set(style.rare_classes) <= set(CLASS_NAMES) and len(style.rare_classes) == 12
    # One class of every confusable pair is rare: text cannot tell the twins apart.
    assert all((a in style.rare_classes) != (b in style.rare_classes) for a, b in CONFUSABLE_PAIRS)
    records = [world.image_record("pretrain", i, 0, "v3")[1] for i in range(1500)]
    rare_present = rare_named = common_present = common_named = settings_only = 0
    for record in records:
        for caption in record["captions"]:
            words = set(split_words(caption))
            named = words & set(CLASS_NAMES)
            assert named <= set(record["labels"]), caption
            assert set(split_words(caption)) <= set(vocabulary()), caption
            settings_only += not named
            for label in record["labels"]:
                if label in style.rare_classes:
                    rare_present, rare_named = rare_present + 1, rare_named + (label in words)
                else:
                    common_present, common_named = (
                        common_present + 1,
                        common_named + (label in words),
                    )
    assert rare_named / rare_present < 0.06
    assert common_named / common_present > 0.4
    # Images holding only rare classes get captions that name the setting and no object.
    assert 0 < settings_only / (5 * len(records)) < 0.1


def test_v4_draws_v3_images_with_half_the_classes_rare() -> None:
    style = world.V4.captions
    assert set(world.V3.captions.rare_classes) < set(style.rare_classes) <= set(CLASS_NAMES)
    assert len(style.rare_classes) == len(CLASS_NAMES) // 2 == 24
    # The twelve added classes have no twin among the rare ones.
    added = set(style.rare_classes) - set(world.V3.captions.rare_classes)
    assert not any({a, b} <= set(style.rare_classes) for a, b in CONFUSABLE_PAIRS)
    assert len(added) == 12
    for index in range(50):  # same objects and layout: only the captions differ
        v3_spec, v3_record = world.image_record("train", index, 0, "v3")
        v4_spec, v4_record = world.image_record("train", index, 0, "v4")
        assert v3_spec == v4_spec and v3_record == v4_record
    named = Counter()
    present = Counter()
    for index in range(800):
        record = world.image_record("pretrain", index, 0, "v4")[1]
        for caption in record["captions"]:
            words = set(split_words(caption))
            for label in record["labels"]:
                group = "rare" if label in style.rare_classes else "common"
                present[group] += 1
                named[group] += label in words
    assert named["rare"] / present["rare"] < 0.06 < 0.4 < named["common"] / present["common"]


def test_v3_world_on_disk_is_its_own_cache(tmp_path: Path) -> None:
    v2 = ensure_world(tmp_path, "test", 4, image_size=32)
    v3 = ensure_world(tmp_path, "test", 4, image_size=32, version="v3")
    assert v2.name == "v2-test-4-32-s0" and v3.name == "v3-test-4-32-s0"
    assert _folder_bytes(v2) != _folder_bytes(v3)
    assert _folder_bytes(ensure_world(tmp_path / "again", "test", 4, 32, 0, "v3")) == (
        _folder_bytes(v3)
    )
    world.main(["--root", str(tmp_path), "--split", "val", "--num-images", "2", "--version", "v3"])


def test_world_datamodule_world_version(tmp_path: Path) -> None:
    from cssa_lightning.synthetic import WorldDataModule

    data = WorldDataModule(
        root=str(tmp_path), num_train=12, num_val=6, num_test=5, world_version="v3"
    )
    assert Path(data.val_source) == tmp_path / "v3-val-6-64-s0"
    assert Path(data.train_source) == tmp_path / "v3-train-12-64-s0"


def test_true_class_contexts_are_each_class_s_most_frequent_context(tmp_path):
    from types import SimpleNamespace

    import torch

    from cssa_lightning.reporting.callbacks import ContextAgreement
    from cssa_lightning.synthetic import WorldDataModule

    data = WorldDataModule(root=str(tmp_path), num_train=300, num_val=6, num_test=5)
    truth = data.true_class_contexts()
    assert len(truth) == len(data.class_names)
    records = [
        json.loads(line)
        for line in (Path(data.train_source) / "metadata.jsonl").read_text().splitlines()
    ]
    for name, context in zip(data.class_names, truth, strict=True):
        # Out-of-context objects do not count: of the class's own contexts, the most frequent.
        counts = Counter(
            r["context"]
            for r in records
            if name in r["labels"] and r["context"] in contexts_of(name)
        )
        if not counts:
            assert context == "none"
            continue
        assert context in contexts_of(name)
        assert counts[context] == max(counts.values())
    assert truth.count("none") < len(truth) // 4
    # The callback scores a task's contexts against them: 1 for the same grouping under
    # other names, lower for another grouping, nothing for a task without contexts.
    names = sorted(set(truth))
    same = torch.tensor([names.index(c) * 7 + 3 for c in truth])
    other = torch.tensor([i % 3 for i in range(len(truth))])
    trainer = SimpleNamespace(datamodule=data, loggers=[], global_step=0)
    for found, expected in ((same, 1.0), (other, None)):
        task = SimpleNamespace(class_to_context=found, hparams={"context": {"enabled": True}})
        callback = ContextAgreement()
        callback.on_train_start(trainer, task)
        if expected is None:
            assert callback.ari < 0.5
        else:
            assert callback.ari == pytest.approx(expected)
    callback = ContextAgreement()
    callback.on_train_start(trainer, SimpleNamespace(hparams={"context": {"enabled": False}}))
    assert callback.ari is None
