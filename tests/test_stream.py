"""A streamed unlabeled pool (``data.unlabeled_source``): read lazily from an image list,
split between processes and workers without overlap, resumable to the batch, and trained on
by a mean-teacher task whose pseudo-label memory does not grow with the pool."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.data.stream import (
    ListStreamSampler,
    buffer_shuffled,
    count_images,
    read_image_list,
)

from .conftest import fit_config


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def image_list(tmp_path, image_folders) -> Path:
    """The 96 training images as an unlabeled list (after a comment and a blank line)."""
    lines = ["# unlabeled pool", ""]
    lines += [str(p) for p in sorted((image_folders["train"] / "images").glob("*.png"))]
    return write_list(tmp_path / "unlabeled.txt", lines)


def test_an_image_list_is_read_lazily_relative_to_its_folder(tmp_path):
    source = write_list(
        tmp_path / "pool.txt", ["# header", "a.png", "", "  sub/b.jpg  ", "/x/c.png"]
    )
    assert list(read_image_list(source)) == [
        (2, str(tmp_path / "a.png")),
        (4, str(tmp_path / "sub/b.jpg")),
        (5, "/x/c.png"),
    ]
    assert count_images(source) == 3
    with pytest.raises(ValueError, match="names no image"):
        count_images(write_list(tmp_path / "empty.txt", ["# nothing"]))
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        count_images(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a.png\ncaf\xe9.png\n")
    with pytest.raises(ValueError, match=r"latin.txt:2: not valid UTF-8"):
        count_images(latin)


def test_the_buffer_shuffle_is_a_seeded_permutation():
    items = list(range(50))
    shuffled = list(buffer_shuffled(iter(items), 8, np.random.default_rng(1)))
    assert sorted(shuffled) == items and shuffled != items
    assert shuffled == list(buffer_shuffled(iter(items), 8, np.random.default_rng(1)))
    assert list(buffer_shuffled(iter(items), 1, np.random.default_rng(1))) == items


def keys(source, total, rank=0, world=1, epoch=0, skip=0, buffer=16):
    sampler = ListStreamSampler(
        source, total, seed=7, stream=1, rank=rank, world_size=world, shuffle_buffer=buffer
    )
    sampler.skip, sampler.resume_epoch = skip, epoch
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_stream_is_shared_between_processes_without_overlap_and_resumes(tmp_path):
    source = write_list(tmp_path / "pool.txt", [f"{i}.png" for i in range(40)])
    one = keys(source, 36)
    # One pass, shuffled, less the last partial batch: no image twice.
    assert len(one) == len({line for line, _, _ in one}) == 36
    assert [line for line, _, _ in one] != sorted(line for line, _, _ in one)
    assert keys(source, 36, epoch=1) != one  # each epoch its own order
    # Two processes: positions alternate, the same keys (and augmentation seeds) as one process.
    halves = [keys(source, 36, rank=r, world=2) for r in (0, 1)]
    assert halves[0] == one[0::2] and halves[1] == one[1::2]
    assert not set(halves[0]) & set(halves[1])
    # Resumed after 3 batches of 2 of this process's share: the rest of the same stream.
    assert keys(source, 36, rank=1, world=2, skip=6) == halves[1][6:]
    # A pool smaller than the epoch is read again from its start.
    cycled = keys(source, 60)
    assert len(cycled) == 60 and len({line for line, _, _ in cycled[:40]}) == 40


def test_streaming_memory_does_not_grow_with_the_pool(tmp_path):
    def peak(size: int) -> int:
        lines = [f"dir/{i:08d}.png" for i in range(size)]
        source = write_list(tmp_path / f"pool{size}.txt", lines)
        sampler = ListStreamSampler(
            source, size, seed=7, stream=1, rank=1, world_size=4, shuffle_buffer=256
        )
        tracemalloc.start()
        count = sum(1 for _ in sampler)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == size // 4
        return top

    small, large = peak(2_000), peak(100_000)
    # A listed pool of 100,000 paths would hold several MB; the stream holds its buffer.
    assert large < 1_000_000, large
    assert large < 3 * small + 200_000, (small, large)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_do_not_depend_on_workers_and_resume_exactly(
    image_folders, image_list, workers
):
    def datamodule(num_workers: int) -> MultiLabelDataModule:
        torch.manual_seed(11)
        module = MultiLabelDataModule(
            str(image_folders["val"]),
            labeled_ratio=1.0,
            image_size=32,
            labeled_batch_size=4,
            unlabeled_batch_size=8,
            num_workers=num_workers,
            unlabeled_source=str(image_list),
            unlabeled_shuffle_buffer=32,
        )
        module.setup("fit")
        return module

    def unlabeled_batches(module: MultiLabelDataModule) -> list[dict]:
        out = []
        for batch in module.train_dataloader():
            batch = batch[0] if isinstance(batch, tuple) else batch
            out.append(batch["unlabeled"])
        return out

    reference = datamodule(0)
    assert reference.num_unlabeled == 96 and len(reference.labeled_indices) == 24
    whole = unlabeled_batches(reference)
    assert len(whole) == 12  # one pass over the 96 listed images
    lines = torch.cat([b["index"] for b in whole]).tolist()
    assert sorted(lines) == list(range(3, 99))  # every listed image once (lines 3-98)
    assert "target" not in whole[0]  # a streamed pool has no hidden labels
    other = unlabeled_batches(datamodule(workers))
    for a, b in zip(whole, other, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # Resumed after 5 trained batches of epoch 0: the same images and views from batch 6 on.
    resumed = datamodule(workers)
    resumed.load_state_dict({"shuffle_seed": reference.shuffle_seed(), "epoch": 0, "batches": 5})
    tail = unlabeled_batches(resumed)
    assert len(tail) == 7
    for a, b in zip(whole[5:], tail, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_streamed_pool_options_fail_with_their_fix(image_folders, image_list):
    with pytest.raises(ValueError, match="set data.labeled_ratio to 1.0"):
        MultiLabelDataModule(str(image_folders["val"]), unlabeled_source=str(image_list))
    module = MultiLabelDataModule(
        str(image_folders["val"]), labeled_ratio=1.0, unlabeled_source=str(image_list)
    )
    module.setup("fit")
    with pytest.raises(ValueError, match="not with data.unlabeled_source"):
        module.unlabeled_eval_dataloader()


def streamed_fit(out: Path, folders, clip_dir, image_list: Path, memory: int | None) -> Path:
    pseudo = {"memory": memory} if memory else {}
    return fit_config(
        out,
        folders,
        clip_dir,
        "cssa_lightning.MeanTeacherTask",
        {"warmup_epochs": 1, "rampup_epochs": 0.5, "pseudo": pseudo},
        data={
            "train_source": str(folders["val"]),
            "labeled_ratio": 1.0,
            "unlabeled_source": str(image_list),
            "unlabeled_shuffle_buffer": 32,
        },
        logger=False,
        test_after_fit=False,
    )


def test_a_mean_teacher_trains_on_a_streamed_pool(
    tmp_path, image_folders, tiny_clip_dir, image_list
):
    config = streamed_fit(tmp_path, image_folders, tiny_clip_dir, image_list, memory=16)
    build_cli(["fit", "--config", str(config)])
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    # The memory is the 16-row ring, not a row per listed image; the semi-supervised epoch
    # (3 steps of 8 streamed images) filled it and set the thresholds.
    assert state["pseudo_labeller.scores"].shape == (16, 6)
    assert bool(state["pseudo_labeller.seen"].all())
    assert torch.isfinite(state["pseudo_labeller.thresholds"]).any()


def test_a_streamed_pool_needs_a_bounded_memory(
    tmp_path, image_folders, tiny_clip_dir, image_list, capsys
):
    from cssa_lightning.commands.entry import main

    config = streamed_fit(tmp_path, image_folders, tiny_clip_dir, image_list, memory=None)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config)])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: data.unlabeled_source streams") and "pseudo.memory" in err[-1]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_listed_image_is_one_line_naming_the_list_and_line(
    tmp_path, image_folders, tiny_clip_dir, capsys, workers
):
    from cssa_lightning.commands.entry import main

    images = sorted((image_folders["train"] / "images").glob("*.png"))
    pool = write_list(
        tmp_path / "pool.txt", [str(images[0]), "missing.png"] + list(map(str, images[1:20]))
    )
    config = streamed_fit(tmp_path, image_folders, tiny_clip_dir, pool, memory=16)
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "fit",
                "--config",
                str(config),
                f"--data.init_args.num_workers={workers}",
                "--data.init_args.unlabeled_shuffle_buffer=1",
                "--data.init_args.unlabeled_batch_size=3",
            ]
        )
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {pool}:2: cannot read image {tmp_path / 'missing.png'}")
