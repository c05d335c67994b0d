"""Every long step reports progress: world generation, record tables, bias calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from cssa_lightning import progress
from cssa_lightning.data import records
from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.methods.multilabel import MultiLabelTask
from cssa_lightning.progress import ProgressBar, track
from cssa_lightning.synthetic import world


class RecordingBar(ProgressBar):
    """A ``ProgressBar`` that draws nothing and keeps what each bar was told."""

    bars: list[RecordingBar] = []

    def __init__(self, description, total, disable=False):
        super().__init__(description, total, disable=True)
        RecordingBar.bars.append(self)


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.bars = []
    monkeypatch.setattr(progress, "ProgressBar", RecordingBar)
    monkeypatch.setattr(world, "ProgressBar", RecordingBar)
    return RecordingBar.bars


@pytest.mark.parametrize("workers", [1, 2])
def test_world_generation_counts_every_image(tmp_path: Path, bars, monkeypatch, workers):
    monkeypatch.setattr(world, "_CHUNK", 4)
    world.generate_world(tmp_path / "w", "val", 10, image_size=32, seed=1, workers=workers)
    [bar] = bars
    assert bar.description == "world val" and bar.total == bar.n == 10


def test_record_table_progress(image_folders, bars):
    source = image_folders["train"]
    table = records.build_record_table(
        records.read_source(source), ["red", "green", "blue", "yellow", "cyan", "magenta"]
    )
    assert [bar.description for bar in bars] == ["checking train", "record table"]
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
    assert bar.description == "bias calibration" and bar.total == bar.n == 3


def test_track_yields_every_item_and_counts_them():
    with ProgressBar("x", 3) as bar:  # a real bar (nothing is drawn when not on a terminal)
        bar.update(2)
        assert bar.n == 2
    assert list(track(iter(range(4)), "y", total=4)) == [0, 1, 2, 3]
