"""Checkpoints cannot run code when loaded, and any damaged checkpoint ends in one clear line.

Every load the package performs is weights-only (tensors and plain values): ``cssa predict``
and ``cssa export`` (:func:`cssa_lightning.commands.trained.load_trained`), and ``cssa fit/validate/
test --ckpt_path`` (LightningCLI's hyperparameter read and the package's checkpoint IO).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.commands.trained import load_trained
from cssa_lightning.guards import AtomicCheckpointIO

from .conftest import fit_config
from .test_predict import predict_error


class _OpensAFile:
    """Pickled as a call to ``open(marker, "w")``: loading it without the weights-only
    unpickler creates ``marker``; any code could run the same way."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def code_running_checkpoint(tmp_path, trained_cssa) -> tuple[Path, Path]:
    """A real training checkpoint with one extra entry whose unpickling runs code."""
    marker = tmp_path / "code-ran"
    stored = torch.load(trained_cssa, map_location="cpu", weights_only=True)
    stored["callbacks"] = {"innocent": _OpensAFile(marker)}
    path = tmp_path / "evil.ckpt"
    torch.save(stored, path)
    with pytest.raises(Exception, match="Weights only load failed"):  # the file is as meant
        torch.load(path, weights_only=True)
    return path, marker


def test_predict_refuses_a_checkpoint_that_would_run_code(
    tmp_path, code_running_checkpoint, image_folders, capsys
):
    path, marker = code_running_checkpoint
    out = tmp_path / "predictions"
    assert predict_error(path, image_folders["test"], out, capsys) == (
        f"error: checkpoint {path} refused: it holds Python objects beyond tensors and plain "
        "values (io.open), which could run code when loaded; only load checkpoints that "
        "this package wrote"
    )
    assert not marker.exists() and not out.exists()


def test_test_subcommand_refuses_a_checkpoint_that_would_run_code(
    tmp_path, code_running_checkpoint, image_folders, tiny_clip_dir
):
    path, marker = code_running_checkpoint
    config = fit_config(tmp_path, image_folders, tiny_clip_dir, "cssa_lightning.CSSATask")
    with pytest.raises(ValueError, match=rf"checkpoint {path} refused: .*\(io.open\)"):
        build_cli(["test", "--config", str(config), "--ckpt_path", str(path)])
    with pytest.raises(ValueError, match=r"refused: .*\(io.open\)"):
        AtomicCheckpointIO().load_checkpoint(path)  # what fit/test use after the parse
    assert not marker.exists()


def test_a_clean_checkpoint_still_loads_weights_only(trained_cssa):
    task, preprocessing = load_trained(trained_cssa)
    assert type(task).__name__ == "CSSATask" and preprocessing.image_size > 0
    assert AtomicCheckpointIO().load_checkpoint(trained_cssa)["state_dict"]


def test_checkpoints_are_written_with_the_umask_mode_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "a.ckpt")
        os.umask(0o027)
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "b.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.ckpt").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]  # no temporary


def _damaged(original: bytes, rng: random.Random, kind: str) -> bytes:
    if kind == "random":
        return rng.randbytes(rng.choice([1, 10, 300, 3000, 30000]))
    if kind == "truncated":
        return original[: rng.randrange(len(original))]
    flipped = bytearray(original)  # bit flips anywhere: the zip directory, the pickle, tensors
    for _ in range(rng.choice([1, 4, 32])):
        position = rng.randrange(len(flipped))
        flipped[position] ^= 1 << rng.randrange(8)
    return bytes(flipped)


@pytest.mark.parametrize("kind", ["random", "truncated", "bit-flipped"])
def test_damaged_checkpoints_load_or_fail_in_one_line(tmp_path, trained_cssa, kind):
    """A seeded fuzzer: damaged copies of a real checkpoint (60 per kind; 20 bit-flipped ones,
    which mostly load and so cost a model each); each either loads (a
    flip inside tensor data can go unnoticed: the zip format stores no checksum torch checks)
    or raises the one-line ``ValueError`` naming the file, never anything else."""
    original = Path(trained_cssa).read_bytes()
    rng = random.Random(f"checkpoint-fuzz-{kind}")
    path = tmp_path / "damaged.ckpt"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(20 if kind == "bit-flipped" else 60):
        path.write_bytes(_damaged(original, rng, kind))
        for load in (load_trained, AtomicCheckpointIO().load_checkpoint):
            try:
                load(path)
            except ValueError as error:
                message = str(error)
                assert str(path) in message and "\n" not in message, (case, message)
                outcomes["refused"] += 1
            else:
                outcomes["loaded"] += 1
    assert outcomes["refused"] > 0
    if kind != "bit-flipped":
        assert outcomes["loaded"] == 0


def test_random_bytes_in_the_hyperparameter_read_are_one_line(
    tmp_path, image_folders, tiny_clip_dir
):
    # 3,000 random bytes once ended in "IndexError: pop from empty list" from LightningCLI's
    # own weights-only read of the hyperparameters.
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    path = tmp_path / "bad.ckpt"
    rng = random.Random(0)
    for _ in range(5):
        path.write_bytes(rng.randbytes(3000))
        with pytest.raises(ValueError, match=rf"checkpoint {path} (cannot be read|refused)"):
            build_cli(["test", "--config", str(config), "--ckpt_path", str(path)])
