import albumentations as A
import cv2
import numpy as np
import pytest

from cssa_lightning.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    COLOUR_CHANGING_OPS,
    STRONG_OP_NAMES,
    _normalise,
    _weak_ops,
    strong_pool,
    strong_transform,
)

# The ops that change hue or colour identity, by name (independent of COLOUR_CHANGING_OPS).
COLOUR_CHANGING = {"Posterize", "Solarize", "Equalize", "AutoContrast"}


def historical_strong_transform(image_size, mean, std, num_ops=2, cutout_max=0.3):
    """The strong view as it was built before its pool became configurable (commit cba5018)."""
    pool = [
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=1.0),
        A.Posterize(num_bits=(4, 6), p=1.0),
        A.Solarize(threshold_range=(0.5, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.Sharpen(p=1.0),
        A.AutoContrast(p=1.0),
        A.Affine(rotate=(-30, 30), p=1.0),
        A.Affine(shear=(-15, 15), p=1.0),
        A.Affine(translate_percent=(-0.15, 0.15), p=1.0),
        A.GaussianBlur(blur_limit=(3, 5), p=1.0),
    ]
    return A.Compose(
        [
            *_weak_ops(image_size),
            A.SomeOf(pool, n=num_ops, replace=False, p=1.0),
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(cutout_max / 3, cutout_max),
                hole_width_range=(cutout_max / 3, cutout_max),
                fill=127,
                p=1.0,
            ),
            *_normalise(mean, std),
        ]
    )


def _outputs(transform, image, seeds):
    out = []
    for seed in seeds:
        transform.set_random_seed(seed)
        out.append(transform(image=image)["image"].numpy())
    return np.stack(out)


@pytest.mark.parametrize("num_ops", [1, 2, 3])
def test_default_strong_view_is_bit_identical_to_the_historical_one(num_ops):
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    seeds = range(25)
    old = _outputs(historical_strong_transform(32, CLIP_MEAN, CLIP_STD, num_ops), image, seeds)
    new = _outputs(strong_transform(32, CLIP_MEAN, CLIP_STD, num_ops), image, seeds)
    explicit = strong_transform(
        32, CLIP_MEAN, CLIP_STD, num_ops, ops="full", magnitude=1.0, translate=0.15
    )
    assert np.array_equal(new, old)
    assert np.array_equal(_outputs(explicit, image, seeds), old)


def test_colour_preserving_pool_has_no_colour_changing_op():
    full = {type(op).__name__ for op in strong_pool("full")}
    assert COLOUR_CHANGING <= full  # so that leaving them out is a real difference
    pool = strong_pool("colour_preserving")
    names = [type(op).__name__ for op in pool]
    assert not COLOUR_CHANGING & set(names)
    assert not any(isinstance(op, COLOUR_CHANGING_OPS) for op in pool)
    assert names == ["ColorJitter", "Sharpen", "Affine", "Affine", "Affine", "GaussianBlur"]
    jitter = pool[0]
    assert jitter.saturation == (1.0, 1.0) and jitter.hue == (0.0, 0.0)  # no colour change
    assert jitter.brightness == pytest.approx((0.6, 1.4))
    assert jitter.contrast == pytest.approx((0.6, 1.4))
    rotate, shear, translate = pool[2:5]
    assert rotate.rotate == (-30, 30)
    assert shear.shear == {"x": (-15, 15), "y": (-15, 15)}
    assert translate.translate_percent == {"x": (-0.15, 0.15), "y": (-0.15, 0.15)}


def _hue_of_coloured_pixels(tensor) -> np.ndarray:
    """Hue in degrees of the pixels of a normalised CHW view that are neither the cutout's
    grey fill nor dark or grey (the black border of a rotation, which has no hue)."""
    std, mean = np.asarray(CLIP_STD), np.asarray(CLIP_MEAN)
    rgb = (tensor.numpy().transpose(1, 2, 0) * std + mean).astype(np.float32)
    hsv = cv2.cvtColor(np.clip(rgb, 0, 1), cv2.COLOR_RGB2HSV)
    fill = (np.abs(rgb * 255 - 127) < 0.5).all(-1)
    keep = ~fill & (hsv[..., 1] > 0.3) & (hsv[..., 2] > 0.15)
    assert keep.mean() > 0.2  # most of the image is measured
    return hsv[..., 0][keep]


def test_colour_preserving_view_keeps_the_hue_of_a_solid_colour():
    # An orange (hue 30 degrees), dark enough that a brightness and contrast gain do not clip.
    image = np.full((40, 40, 3), (150, 90, 30), dtype=np.uint8)
    seeds = range(20)
    kept = strong_transform(32, CLIP_MEAN, CLIP_STD, 6, ops="colour_preserving")
    for seed in seeds:
        kept.set_random_seed(seed)
        hue = _hue_of_coloured_pixels(kept(image=image)["image"])
        assert abs(hue.mean() - 30.0) < 2.0, seed
    # The full pool (all its ops) does move the hue: the check above can fail.
    full = strong_transform(32, CLIP_MEAN, CLIP_STD, 10, ops="full")
    shifts = []
    for seed in seeds:
        full.set_random_seed(seed)
        image_out = full(image=image)["image"]
        std, mean = np.asarray(CLIP_STD), np.asarray(CLIP_MEAN)
        rgb = (image_out.numpy().transpose(1, 2, 0) * std + mean).astype(np.float32)
        hsv = cv2.cvtColor(np.clip(rgb, 0, 1), cv2.COLOR_RGB2HSV)
        keep = hsv[..., 1] > 0.3
        shifts.append(abs(hsv[..., 0][keep].mean() - 30.0) if keep.any() else 180.0)
    assert max(shifts) > 5.0


def test_zero_magnitude_ops_are_the_identity():
    # Below 255: Solarize at magnitude 0 still inverts saturated values (its threshold is 1).
    image = np.random.default_rng(1).integers(0, 255, (33, 31, 3), dtype=np.uint8)
    without_magnitude = (A.Equalize, A.AutoContrast)
    for ops in ("full", "colour_preserving"):
        for op in strong_pool(ops, magnitude=0.0):
            if isinstance(op, without_magnitude):
                continue
            op.set_random_seed(0)
            assert np.array_equal(op(image=image)["image"], image), type(op).__name__
    # And at magnitude 1 every one of them changes the image.
    for op in strong_pool("full", magnitude=1.0):
        op.set_random_seed(0)
        assert not np.array_equal(op(image=image)["image"], image), type(op).__name__


def test_magnitude_and_translate_scale_the_ranges():
    pool = strong_pool("full", magnitude=0.5, translate=0.1)
    by_name = {}
    for op in pool:
        by_name.setdefault(type(op).__name__, []).append(op)
    rotate, shear, translate = by_name["Affine"]
    assert rotate.rotate == (-15, 15)
    assert shear.shear == {"x": (-7.5, 7.5), "y": (-7.5, 7.5)}
    assert translate.translate_percent == {"x": (-0.05, 0.05), "y": (-0.05, 0.05)}
    jitter = by_name["ColorJitter"][0]
    assert jitter.brightness == pytest.approx((0.8, 1.2))
    assert jitter.hue == pytest.approx((-0.025, 0.025))
    assert by_name["GaussianBlur"][0].sigma_limit == pytest.approx((0.25, 1.5))
    assert by_name["Solarize"][0].threshold_range == pytest.approx((0.75, 1.0))
    assert by_name["Posterize"][0].num_bits == (6, 7)
    # strong_translate alone moves only the translate op.
    alone = strong_pool("full", translate=0.05)
    assert alone[6].rotate == (-30, 30)
    assert alone[8].translate_percent == {"x": (-0.05, 0.05), "y": (-0.05, 0.05)}


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"ops": "none"}, "strong_ops"),
        ({"num_ops": -1}, "strong_num_ops"),
        ({"num_ops": 11}, "strong_num_ops"),
        ({"num_ops": 7, "ops": "colour_preserving"}, "strong_num_ops"),
        ({"num_ops": 1.5}, "strong_num_ops"),
        ({"magnitude": -0.1}, "strong_magnitude"),
        ({"magnitude": 2.5}, "strong_magnitude"),
        ({"magnitude": float("nan")}, "strong_magnitude"),
        ({"translate": -0.01}, "strong_translate"),
        ({"translate": 1.5}, "strong_translate"),
        ({"only": ["spin"]}, "strong_op_names"),
        ({"only": []}, "strong_op_names"),
        ({"only": ["solarize"], "ops": "colour_preserving"}, "strong_op_names"),
        ({"only": ["rotate"], "num_ops": 2}, "strong_num_ops"),
    ],
)
def test_bad_strong_options(options, name):
    with pytest.raises(ValueError, match=name):
        strong_transform(32, CLIP_MEAN, CLIP_STD, **options)


def test_strong_op_names_keep_only_those_ops_in_the_pools_order():
    (rotate,) = strong_pool("full", only=["rotate"])
    assert isinstance(rotate, A.Affine) and rotate.rotate == (-30.0, 30.0)
    assert rotate.shear == {"x": (0.0, 0.0), "y": (0.0, 0.0)}
    first, second = strong_pool("colour_preserving", magnitude=0.5, only=["blur", "translate"])
    assert isinstance(first, A.Affine) and isinstance(second, A.GaussianBlur)  # pool order
    full = strong_pool("full")
    assert [type(op) for op in strong_pool("full", only=list(STRONG_OP_NAMES))] == [
        type(op) for op in full
    ]
    # One op, every time: the view of a one-op pool at num_ops 1 is that op's.
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    view = strong_transform(32, CLIP_MEAN, CLIP_STD, 1, cutout_max=0.01, only=["blur"])
    assert tuple(view(image=image)["image"].shape) == (3, 32, 32)


def test_a_reflected_border_leaves_no_black_corner():
    # A rotated uniform grey image: black corners with the historical border, none reflected.
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    for border, corner_black in (("constant", True), ("reflect", False)):
        (rotate,) = strong_pool("full", only=["rotate"], border=border)
        rotate.set_random_seed(0)
        out = rotate(image=image)["image"]
        assert (out[0, 0] == 0).all() == corner_black, border
    default = strong_pool("full")
    explicit = strong_pool("full", border="constant")
    assert [op.get_transform_init_args() for op in default] == [
        op.get_transform_init_args() for op in explicit
    ]
