"""Every long step reports progress: world generation, record tables, bias calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from cssa_lightning import multilabel, records
from cssa_lightning.datamodule import MultiLabelDataModule
from cssa_lightning.multilabel import MultiLabelTask
from cssa_lightning.synthetic import world


class RecordingBar:
    """A ``tqdm`` stand-in that records what each bar was told."""

    bars: list[RecordingBar] = []

    def __init__(self, iterable=None, desc=None, total=None, **kwargs):
        self.iterable, self.desc, self.n = iterable, desc, 0
        self.total = len(iterable) if total is None and iterable is not None else total
        RecordingBar.bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            self.n += 1  # items handed out (tqdm counts one on the next step)
            yield item

    def update(self, n=1):
        self.n += n

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.bars = []
    for module in (world, records, multilabel):
        monkeypatch.setattr(module, "tqdm", RecordingBar)
    return RecordingBar.bars


@pytest.mark.parametrize("workers", [1, 2])
def test_world_generation_counts_every_image(tmp_path: Path, bars, monkeypatch, workers):
    monkeypatch.setattr(world, "_CHUNK", 4)
    world.generate_world(tmp_path / "w", "val", 10, image_size=32, seed=1, workers=workers)
    [bar] = bars
    assert bar.desc == "world val" and bar.total == bar.n == 10


def test_record_table_progress(image_folders, bars):
    source = image_folders["train"]
    table = records.build_record_table(
        records.read_source(source), ["red", "green", "blue", "yellow", "cyan", "magenta"]
    )
    assert [bar.desc for bar in bars] == ["checking train", "record table"]
    assert all(bar.n == bar.total == len(table) == 96 for bar in bars)


def test_bias_calibration_progress(image_folders, tiny_clip_dir, bars):
    data = MultiLabelDataModule(
        str(image_folders["train"]), labeled_ratio=0.5, image_size=32, eval_batch_size=10
    )
    model = MultiLabelTask(
        data.class_names, clip_checkpoint=str(tiny_clip_dir), calibration_max_images=25
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data.setup("fit")
    trainer.datamodule = data
    model.trainer = trainer
    bars.clear()
    model.calibrate_bias()
    [bar] = bars
    # 48 labeled images in batches of 10, stopped once 25 were seen: 3 of 5 batches.
    assert bar.desc == "bias calibration" and bar.total == bar.n == 3
