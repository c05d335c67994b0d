"""The embedded default data module: :class:`MultiLabelDataModule` over the synthetic world."""

from __future__ import annotations

from pathlib import Path

from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.synthetic.world import WORLD_VERSION, VersionName, ensure_world


class WorldDataModule(MultiLabelDataModule):
    """The synthetic world of :mod:`cssa_lightning.synthetic.world` as a data module.

    Writes the train, val and test worlds under ``root`` on first use (seconds), then behaves
    as :class:`MultiLabelDataModule` over those image folders.

    Args:
        root: Cache directory of generated worlds.
        num_train: Training images (split into labeled and unlabeled).
        num_val: Validation images; ``0`` for no val split (validation then uses the test
            split, as :class:`MultiLabelDataModule` does without ``val_source``).
        num_test: Test images.
        world_image_size: Side of the generated images.
        world_seed: Seed of the world (train, val and test use independent streams).
        world_version: ``"v2"``, ``"v3"`` (visible objects, weaker text prior) or ``"v4"``
            (v3's images, half of the classes rare in the text); see
            :class:`cssa_lightning.synthetic.world.WorldVersion`. Pair v3 with the
            ``tiny-clip-v3`` checkpoint, which was pre-trained on it (v4: ``tiny-clip-v4``).
        **kwargs: Options of :class:`MultiLabelDataModule` other than the sources.
    """

    def __init__(
        self,
        root: str = "~/.cache/cssa_lightning/world",
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 2000,
        world_image_size: int = 64,
        world_seed: int = 0,
        world_version: VersionName = WORLD_VERSION,
        **kwargs,
    ):
        if num_val < 0:
            raise ValueError(f"num_val must be non-negative, got {num_val}")
        root_path = Path(root).expanduser()
        world = (world_image_size, world_seed, world_version)
        train = ensure_world(root_path, "train", num_train, *world)
        val = ensure_world(root_path, "val", num_val, *world) if num_val > 0 else None
        test = ensure_world(root_path, "test", num_test, *world)
        super().__init__(
            train_source=str(train),
            val_source=None if val is None else str(val),
            test_source=str(test),
            **kwargs,
        )
