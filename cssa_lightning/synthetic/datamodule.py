"""The embedded default data module: :class:`MultiLabelDataModule` over the synthetic world."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.synthetic.contexts import contexts_of
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

    def true_class_contexts(self) -> list[str]:
        """Each class's true context, in ``class_names`` order: of the contexts the world
        draws the class from (:func:`~cssa_lightning.synthetic.contexts.contexts_of`), the one
        of the most training images showing it (``"none"``: no training image shows it in
        one of its contexts). Objects placed out of context do not count.

        The world draws one context per image and most objects from it, so the contexts
        CSSA identifies from label co-occurrence can be scored against these
        (:class:`~cssa_lightning.reporting.callbacks.ContextAgreement`)."""
        counts: dict[str, Counter] = {name: Counter() for name in self.class_names}
        metadata = Path(self.train_source) / "metadata.jsonl"
        with metadata.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                for label in record["labels"]:
                    if record["context"] in contexts_of(label):
                        counts[label][record["context"]] += 1
        return [
            min(c.items(), key=lambda item: (-item[1], item[0]))[0] if c else "none"
            for c in (counts[name] for name in self.class_names)
        ]
