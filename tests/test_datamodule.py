import numpy as np
import pytest
import torch

from cssa_lightning.data.datamodule import MultiLabelDataModule

from .conftest import CLASS_NAMES


def datamodule_options(folders, **kwargs) -> dict:
    """The tests' data module options on the fixture folders, with ``kwargs`` on top."""
    options = dict(
        train_source=str(folders["train"]),
        test_source=str(folders["test"]),
        labeled_ratio=0.25,
        image_size=32,
        labeled_batch_size=4,
        unlabeled_batch_size=8,
        eval_batch_size=16,
    )
    return options | kwargs


def make_datamodule(folders, **kwargs) -> MultiLabelDataModule:
    datamodule = MultiLabelDataModule(**datamodule_options(folders, **kwargs))
    datamodule.setup("fit")
    return datamodule


def test_split_counts_and_priors(image_folders, caplog):
    caplog.set_level("INFO")
    datamodule = make_datamodule(image_folders)
    assert datamodule.class_names == CLASS_NAMES
    assert len(datamodule.labeled_indices) == 24 and len(datamodule.unlabeled_indices) == 72
    assert not set(datamodule.labeled_indices) & set(datamodule.unlabeled_indices)
    assert "24 labeled, 72 unlabeled" in caplog.text
    assert "labeled class priors: red=" in caplog.text
    # Same seed in a second instance (as in another process): the same split.
    again = make_datamodule(image_folders)
    assert np.array_equal(again.labeled_indices, datamodule.labeled_indices)


def test_two_stream_batches(image_folders):
    datamodule = make_datamodule(image_folders)
    loader = datamodule.train_dataloader()
    batches = list(iter(loader))
    # 72 unlabeled images / 8 per batch: the unlabeled stream defines the epoch.
    assert len(batches) == 9
    batch = batches[0][0] if isinstance(batches[0], tuple) else batches[0]
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    assert labeled["image"].shape == (4, 3, 32, 32) and labeled["image"].dtype == torch.float32
    assert labeled["target"].shape == (4, 6) and labeled["target"].dtype == torch.float32
    assert unlabeled["image_weak"].shape == (8, 3, 32, 32)
    assert unlabeled["image_strong"].shape == (8, 3, 32, 32)
    assert unlabeled["target"].shape == (8, 6)
    assert not torch.allclose(unlabeled["image_weak"], unlabeled["image_strong"])
    # Every labeled target comes from the labeled split only.
    labeled_targets = datamodule.labeled_targets()
    assert labeled_targets.shape == (24, 6)


def test_strong_view_differs_from_weak_for_every_image(image_folders):
    datamodule = make_datamodule(image_folders)
    _, weak, strong = datamodule._transforms()
    from cssa_lightning.data.datamodule import UnlabeledImages

    dataset = UnlabeledImages(
        datamodule.train_table, datamodule.unlabeled_indices[:20], weak, strong
    )
    for item in dataset:
        assert (item["image_weak"] - item["image_strong"]).abs().mean() > 0.01


def test_fully_labeled_has_no_unlabeled_stream(image_folders):
    datamodule = make_datamodule(image_folders, labeled_ratio=1.0)
    batch = next(iter(datamodule.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert set(batch) == {"labeled"}


def test_eval_loaders_never_validate_on_the_test_split(image_folders, caplog):
    datamodule = make_datamodule(image_folders)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32)
    # Without val_source or val_fraction nothing is validated, and the user is told.
    assert datamodule.val_dataloader() == []
    assert "no validation split" in caplog.text
    with_val = make_datamodule(image_folders, val_source=str(image_folders["val"]))
    assert len(with_val.val_dataloader().dataset) == 24


def test_val_fraction_is_held_out_of_both_streams(image_folders):
    datamodule = make_datamodule(image_folders, val_fraction=0.25, val_seed=3)
    val, labeled, unlabeled = (
        set(datamodule.val_indices.tolist()),
        set(datamodule.labeled_indices.tolist()),
        set(datamodule.unlabeled_indices.tolist()),
    )
    assert len(val) == 24 and len(labeled) == 18 and len(unlabeled) == 54
    assert not val & labeled and not val & unlabeled and not labeled & unlabeled
    assert val | labeled | unlabeled == set(range(96))
    # The validation loader reads exactly the held-out training images.
    loader = datamodule.val_dataloader()
    paths = {row["image"]["path"] for row in loader.dataset.table}
    train_paths = [row["image"]["path"] for row in datamodule.train_table]
    assert paths == {train_paths[i] for i in val}
    # Seeded: the same hold-out in another process; another val_seed holds out other images;
    # the labeled split seed does not move the validation images.
    again = make_datamodule(image_folders, val_fraction=0.25, val_seed=3, split_seed=7)
    assert np.array_equal(again.val_indices, datamodule.val_indices)
    other = make_datamodule(image_folders, val_fraction=0.25, val_seed=4)
    assert not np.array_equal(other.val_indices, datamodule.val_indices)


def test_val_fraction_zero_keeps_the_labeled_split(image_folders):
    plain = make_datamodule(image_folders)
    explicit = make_datamodule(image_folders, val_fraction=0.0)
    assert np.array_equal(plain.labeled_indices, explicit.labeled_indices)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"val_fraction": 0.001}, "leaves no validation image"),
        ({"val_fraction": 0.1, "val_source": "x"}, "either val_source or val_fraction"),
    ],
)
def test_bad_val_options(image_folders, options, message):
    with pytest.raises(ValueError, match=message):
        make_datamodule(image_folders, **options)


def test_normalisation_read_from_processor(image_folders, tiny_clip_dir):
    datamodule = make_datamodule(image_folders, clip_processor=str(tiny_clip_dir))
    assert datamodule.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.parametrize("ratio", [0.0, 1.2])
def test_bad_ratio(image_folders, ratio):
    with pytest.raises(ValueError, match="labeled_ratio"):
        make_datamodule(image_folders, labeled_ratio=ratio)


def test_augmentation_is_seeded_by_torch(image_folders):
    def first_batch():
        torch.manual_seed(7)
        datamodule = make_datamodule(image_folders)
        return next(iter(datamodule.train_dataloader()))

    one, two = first_batch(), first_batch()
    one, two = (b[0] if isinstance(b, tuple) else b for b in (one, two))
    torch.testing.assert_close(one["unlabeled"]["image_strong"], two["unlabeled"]["image_strong"])
    torch.testing.assert_close(one["labeled"]["image"], two["labeled"]["image"])


def test_labeled_only_keeps_the_epoch_length(image_folders):
    datamodule = make_datamodule(image_folders, load_unlabeled=False)
    batches = [b[0] if isinstance(b, tuple) else b for b in datamodule.train_dataloader()]
    assert len(batches) == 9 and all(set(b) == {"labeled"} for b in batches)


def _cutout(transform):
    import albumentations as A

    return next(t for t in transform.transforms if isinstance(t, A.CoarseDropout))


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_labeled_view_and_cutout_size(image_folders, view):
    datamodule = make_datamodule(image_folders, labeled_view=view, cutout_max=0.15)
    loaders = datamodule.train_dataloader().iterables
    labeled = loaders["labeled"].dataset.transform
    unlabeled = loaders["unlabeled"].dataset
    has_cutout = any(type(t).__name__ == "CoarseDropout" for t in labeled.transforms)
    assert has_cutout == (view == "strong")
    assert _cutout(unlabeled.strong).hole_height_range == pytest.approx((0.05, 0.15))
    with pytest.raises(ValueError, match="cutout_max"):
        make_datamodule(image_folders, cutout_max=0.0)


def _strong_pool(transform):
    import albumentations as A

    return next(t for t in transform.transforms if isinstance(t, A.SomeOf))


def test_strong_view_options_reach_the_loaders(image_folders):
    from .test_transforms import COLOUR_CHANGING

    options = dict(
        strong_ops="colour_preserving",
        strong_num_ops=3,
        strong_magnitude=0.5,
        strong_translate=0.1,
        labeled_view="strong",
    )
    datamodule = make_datamodule(image_folders, **options)
    assert {k: datamodule.hparams[k] for k in options} == options
    loaders = datamodule.train_dataloader().iterables
    for view in (loaders["unlabeled"].dataset.strong, loaders["labeled"].dataset.transform):
        pool = _strong_pool(view)
        assert pool.n == 3
        names = [type(t).__name__ for t in pool.transforms]
        assert not COLOUR_CHANGING & set(names)
        rotate, _, translate = (t for t in pool.transforms if type(t).__name__ == "Affine")
        assert rotate.rotate == (-15, 15)
        assert translate.translate_percent == {"x": (-0.05, 0.05), "y": (-0.05, 0.05)}
    # The defaults: the full pool, two ops at full strength, the historical strong view.
    default = make_datamodule(image_folders)
    assert len(_strong_pool(default._transforms()[2]).transforms) == 10


def test_default_strong_view_of_the_data_module_is_the_historical_one(image_folders):
    from .test_transforms import _outputs, historical_strong_transform

    datamodule = make_datamodule(image_folders)
    image = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    old = historical_strong_transform(32, datamodule.mean, datamodule.std)
    new = datamodule._transforms()[2]
    assert np.array_equal(_outputs(new, image, range(10)), _outputs(old, image, range(10)))


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"strong_ops": "colour"}, "strong_ops"),
        ({"strong_num_ops": -1}, "strong_num_ops"),
        ({"strong_num_ops": 7, "strong_ops": "colour_preserving"}, "strong_num_ops"),
        ({"strong_magnitude": 3.0}, "strong_magnitude"),
        ({"strong_translate": -0.1}, "strong_translate"),
    ],
)
def test_bad_strong_view_options(image_folders, options, name):
    with pytest.raises(ValueError, match=name):
        MultiLabelDataModule(**datamodule_options(image_folders, **options))
