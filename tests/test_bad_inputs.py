"""Bad and edge-case inputs: each ends in one clear error line or a documented, logged behaviour.

Data files (encodings, malformed entries, odd images), options, checkpoints and training runs
that cannot succeed. Everything here runs on tiny generated data in seconds.
"""

from __future__ import annotations

import codecs
import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.data.records import (
    build_record_table,
    load_image,
    read_source,
    resolve_class_names,
    split_labeled,
)
from cssa_lightning.guards import (
    AtomicCheckpointIO,
    NonFiniteGuard,
    check_writable,
    first_non_finite_parameter,
)
from cssa_lightning.methods.multilabel import MultiLabelTask

from .conftest import CLASS_NAMES, checkpoint_every_step, fit_config


def image_folder(root: Path, lines: list, classes: bytes | None = None, images=("a", "b")) -> Path:
    """A folder with small PNGs ``a.png``, ``b.png`` and ``metadata.jsonl`` from ``lines``
    (dicts are JSON-encoded, bytes written as they are)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / f"{name}.png")
    data = b"".join(
        line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines
    )
    (root / "metadata.jsonl").write_bytes(data)
    if classes is not None:
        (root / "classes.txt").write_bytes(classes)
    return root


RED = {"file_name": "a.png", "labels": ["red"]}
BLUE = {"file_name": "b.png", "labels": ["blue", "green"]}


# -- encodings -----------------------------------------------------------------------------------
def test_utf8_bom_in_metadata_classes_and_csv(tmp_path):
    folder = image_folder(
        tmp_path / "bom",
        [codecs.BOM_UTF8 + (json.dumps(RED) + "\n").encode(), BLUE],
        classes=codecs.BOM_UTF8 + "\n".join(CLASS_NAMES).encode(),
    )
    records = read_source(folder)
    assert [r.labels for r in records] == [("red",), ("blue", "green")]
    assert resolve_class_names(folder, records) == CLASS_NAMES  # no '\ufeffred'
    csv = tmp_path / "bom" / "data.csv"
    csv.write_bytes(codecs.BOM_UTF8 + b"path,labels\na.png,red|blue\n")
    assert [r.labels for r in read_source(csv)] == [("red", "blue")]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_and_utf32_with_bom_are_decoded(tmp_path, encoding):
    folder = image_folder(tmp_path, [])
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in (RED, BLUE)) + "\n"
    (folder / "metadata.jsonl").write_bytes(text.encode(encoding))  # Python writes a BOM
    (folder / "classes.txt").write_bytes("\n".join(CLASS_NAMES).encode(encoding))
    records = read_source(folder)
    assert len(records) == 2 and resolve_class_names(folder, records) == CLASS_NAMES


def test_latin1_and_bomless_utf16_are_rejected_naming_file_and_line(tmp_path):
    folder = image_folder(tmp_path, [RED])
    (folder / "metadata.jsonl").write_bytes(
        (json.dumps(RED) + "\n" + '{"file_name": "b.png", "labels": ["caf\xe9"]}\n').encode(
            "latin-1"
        )
    )
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: not valid UTF-8 .*0xe9.*Latin-1"):
        read_source(folder)
    (folder / "metadata.jsonl").write_bytes((json.dumps(RED) + "\n").encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: NUL bytes .*UTF-16.*expected UTF-8"):
        read_source(folder)
    csv = folder / "data.csv"
    csv.write_bytes("path,labels\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"data.csv:2: not valid UTF-8"):
        read_source(csv)
    (folder / "classes.txt").write_bytes("red\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"classes.txt:2: not valid UTF-8"):
        resolve_class_names(folder, [])


# -- malformed entries ---------------------------------------------------------------------------
@pytest.mark.parametrize("file_name", [3, None, ["a.png"], ""])
def test_non_string_file_name(tmp_path, file_name):
    folder = image_folder(tmp_path, [RED, {"file_name": file_name, "labels": []}])
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: 'file_name' must be a non-empty str"):
        read_source(folder)


def test_identical_repeats_are_merged_with_a_count(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    same = {"file_name": "./a.png", "labels": ["red"]}
    folder = image_folder(tmp_path, [RED, BLUE, same, RED])
    records = read_source(folder)
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["1", "2"]
    assert "2 repeated lines with the same image and labels were dropped" in caplog.text
    assert "metadata.jsonl:3" in caplog.text


def test_conflicting_repeats_are_rejected_naming_both_lines(tmp_path):
    folder = image_folder(tmp_path, [RED, BLUE, {"file_name": "a.png", "labels": ["blue"]}])
    with pytest.raises(
        ValueError, match=r"metadata.jsonl:3: image .*a.png is listed again .*metadata.jsonl:1"
    ):
        read_source(folder)


def test_class_lists(tmp_path):
    folder = image_folder(tmp_path, [RED, BLUE], classes=b"\n  \n")
    with pytest.raises(ValueError, match=r"classes.txt: empty \(expected one class name per line"):
        resolve_class_names(folder, read_source(folder))
    (folder / "classes.txt").write_text("red\n")
    with pytest.raises(ValueError, match=r"classes.txt: one class \('red'\); .*at least two"):
        resolve_class_names(folder, read_source(folder))
    (folder / "classes.txt").write_text("red\nblue\nred\n")
    with pytest.raises(ValueError, match=r"classes.txt: class names are not unique .*'red'"):
        resolve_class_names(folder, read_source(folder))
    (folder / "classes.txt").unlink()
    one = image_folder(tmp_path / "one", [RED, {"file_name": "b.png", "labels": ["red"]}])
    with pytest.raises(
        ValueError, match=r"labels of .*one \(no classes.txt beside it\): one class"
    ):
        resolve_class_names(one, read_source(one))
    with pytest.raises(ValueError, match="class_names: one class"):
        build_record_table(read_source(one), ["red"])


def test_negative_split_seed():
    with pytest.raises(ValueError, match="split_seed must be a non-negative integer, got -1"):
        split_labeled(10, 0.5, seed=-1)


def test_datamodule_rejects_negative_seed_and_one_class(image_folders):
    from cssa_lightning.data.datamodule import MultiLabelDataModule

    with pytest.raises(ValueError, match="split_seed must be a non-negative integer, got -3"):
        MultiLabelDataModule(str(image_folders["train"]), split_seed=-3)
    with pytest.raises(ValueError, match=r"data.class_names: one class \('red'\)"):
        MultiLabelDataModule(str(image_folders["train"]), class_names=["red"])


# -- odd images ----------------------------------------------------------------------------------
def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb = load_image({"path": str(tmp_path / "g16.png"), "bytes": None})
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 50


def test_32_bit_and_float_images(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    assert load_image({"path": str(tmp_path / "i.tif"), "bytes": None}).max() == 255
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    assert load_image({"path": str(tmp_path / "f.tif"), "bytes": None}).max() == 128


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 * 64 > 2 * 1000: PIL refuses
    with pytest.raises(ValueError, match=r"image .*big.png is too large to decode safely"):
        load_image({"path": str(tmp_path / "big.png"), "bytes": None})


# -- training runs -------------------------------------------------------------------------------
class NaNAtStep(MultiLabelTask):
    """The supervised baseline whose loss turns NaN at optimizer step ``nan_step``."""

    nan_step = 2

    def supervised_loss(self, logits, targets, mask=None):
        loss = super().supervised_loss(logits, targets, mask)
        return loss * float("nan") if self.trainer.global_step == self.nan_step else loss


def checkpointed_config(
    tmp_path, folders, clip_dir, task="cssa_lightning.MultiLabelTask", data=None, **options
):
    """:func:`fit_config` without logger, validation images or test after the fit, keeping a
    checkpoint every step in ``tmp_path/checkpoints``."""
    options = {
        "callbacks": [checkpoint_every_step(tmp_path)],
        "logger": False,
        "log_every_n_steps": None,
        "test_after_fit": False,
        **options,
    }
    return fit_config(
        tmp_path, folders, clip_dir, task, data={"val_source": None, **(data or {})}, **options
    )


def test_nan_loss_stops_naming_term_and_step_and_keeps_the_good_checkpoint(
    tmp_path, image_folders, tiny_clip_dir
):
    config = checkpointed_config(
        tmp_path, image_folders, tiny_clip_dir, "tests.test_bad_inputs.NaNAtStep"
    )
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite training loss nan at step 2 \(epoch 0, batch 2\): train/loss_sup = nan",
    ):
        build_cli(["fit", "--config", str(config)])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_nan_loss_skip_mode_counts_and_leaves_weights_alone(tmp_path, image_folders, tiny_clip_dir):
    config = checkpointed_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        "tests.test_bad_inputs.NaNAtStep",
        model_options={"on_non_finite": "skip"},
    )
    cli = build_cli(["fit", "--config", str(config)])
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped_steps == 1 and cli.trainer.global_step == 6
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    before = torch.load(tmp_path / "checkpoints" / "epoch=0-step=2.ckpt", weights_only=False)
    after = torch.load(tmp_path / "checkpoints" / "epoch=0-step=3.ckpt", weights_only=False)
    for name, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][name]), name  # the NaN step changed nothing
    assert first_non_finite_parameter(cli.model) is None
    assert after["callbacks"]["NonFiniteGuard"] == {"skipped_steps": 1}


def test_non_finite_weights_are_never_saved(tmp_path, image_folders, tiny_clip_dir):
    config = checkpointed_config(tmp_path, image_folders, tiny_clip_dir, max_epochs=1)
    cli = build_cli(["fit", "--config", str(config)])
    good = tmp_path / "good.ckpt"
    cli.trainer.save_checkpoint(good)
    size = good.stat().st_size
    with torch.no_grad():
        cli.model.net.alignment.bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"refusing to save .*net.alignment.bias"):
        cli.trainer.save_checkpoint(good)
    assert good.stat().st_size == size and torch.load(good, weights_only=False)["state_dict"]


def test_batch_larger_than_fully_labeled_split_fails_before_training(tmp_path, image_folders):
    from cssa_lightning.data.datamodule import MultiLabelDataModule

    datamodule = MultiLabelDataModule(
        str(image_folders["train"]), labeled_ratio=1.0, labeled_batch_size=128
    )
    with pytest.raises(ValueError, match=r"labeled_batch_size=128 is larger than the 96 labeled"):
        datamodule.setup("fit")
    datamodule.setup("test")  # evaluation does not need a training batch


def test_labeled_batch_larger_than_labeled_split_warns(image_folders, caplog):
    from cssa_lightning.data.datamodule import MultiLabelDataModule

    caplog.set_level(logging.WARNING)
    datamodule = MultiLabelDataModule(
        str(image_folders["train"]), labeled_ratio=0.05, labeled_batch_size=8
    )
    datamodule.setup("fit")
    assert "larger than the 4 labeled images: each labeled batch repeats images" in caplog.text


class EmptyTrainData(LightningDataModule):
    def train_dataloader(self):
        return DataLoader([], batch_size=1)


def test_a_fit_without_training_batches_does_not_pass(tiny_clip_dir):
    model = MultiLabelTask(CLASS_NAMES, clip_checkpoint=str(tiny_clip_dir), calibrate_bias=False)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="the training loader yields no batch"):
        trainer.fit(model, datamodule=EmptyTrainData())


def test_missing_test_source_is_reported_before_training(tmp_path, image_folders, tiny_clip_dir):
    config = checkpointed_config(tmp_path, image_folders, tiny_clip_dir, data={"test_source": None})
    with pytest.raises(ValueError, match=r"--test_after_fit true needs test images"):
        build_cli(["fit", "--config", str(config), "--test_after_fit=true"])
    assert not (tmp_path / "checkpoints").exists()


def test_image_smaller_than_the_patch(tmp_path, image_folders, tiny_clip_dir):
    config = checkpointed_config(tmp_path, image_folders, tiny_clip_dir, data={"image_size": 4})
    with pytest.raises(
        ValueError, match=r"data.image_size=4 is smaller than the CLIP patch \(8 px"
    ):
        build_cli(["fit", "--config", str(config)])


def test_unwritable_output_folder_fails_before_training(tmp_path, image_folders, tiny_clip_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = checkpointed_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        callbacks=[],
        default_root_dir=str(blocker / "out"),
    )
    with pytest.raises(PermissionError, match=r"output folder .*a_file/out cannot be written"):
        build_cli(["fit", "--config", str(config)])
    if os.geteuid() != 0:  # root writes anywhere: a read-only mode cannot be tested as root
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=r"checkpoint folder .*readonly"):
            check_writable(readonly, "checkpoint folder")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def full_disk(obj, stream):
        stream.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last.ckpt \(No space left"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated"])
def test_corrupt_checkpoint_is_one_line(tmp_path, image_folders, tiny_clip_dir, content):
    config = checkpointed_config(tmp_path, image_folders, tiny_clip_dir)
    checkpoint = tmp_path / "bad.ckpt"
    if content == "truncated":
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    else:
        checkpoint.write_bytes(content)
    with pytest.raises(ValueError, match=r"checkpoint .*bad.ckpt cannot be read: .*\(truncated, c"):
        build_cli(["test", "--config", str(config), "--ckpt_path", str(checkpoint)])
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.ckpt does not exist"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoint_with_other_class_order_or_set_is_refused(
    tmp_path, image_folders, tiny_clip_dir
):
    config = checkpointed_config(tmp_path, image_folders, tiny_clip_dir, max_epochs=1)
    build_cli(["fit", "--config", str(config)])
    checkpoint = str(tmp_path / "checkpoints" / "last.ckpt")
    test = ["test", "--config", str(config), "--ckpt_path", checkpoint]
    reversed_names = json.dumps(CLASS_NAMES[::-1])
    with pytest.raises(ValueError, match=r"same 6 classes in another order \(6 moved, first 'red'"):
        build_cli([*test, f"--data.init_args.class_names={reversed_names}"])
    other = json.dumps([*CLASS_NAMES, "black"])
    with pytest.raises(
        ValueError, match=r"differ from the data's 7: .* not in the checkpoint \['bl"
    ):
        build_cli([*test, f"--data.init_args.class_names={other}"])
    build_cli(test)  # the checkpoint's own order loads
