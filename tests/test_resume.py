"""Exact resume: a real ``cssa fit`` killed with SIGKILL and resumed with ``--ckpt_path last``
ends where the uninterrupted run ends, bit for bit (CPU, one thread)."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.data.resume import StreamSampler

from .conftest import checkpoint_every_step, fit_config

FAST = {
    "warmup_epochs": 1,
    "rampup_epochs": 0.5,
    "context": {"num_contexts": 2},
    "attention_heads": 4,
}


def resume_config(out: Path, folders, clip_dir) -> Path:
    """:func:`fit_config` for CSSA, seed 3, whole epochs, a CSV log of every step in
    ``out/csv`` and a checkpoint every step; no test after the fit."""
    return fit_config(
        out,
        folders,
        clip_dir,
        "cssa_lightning.CSSATask",
        FAST,
        seed=3,
        test_after_fit=False,
        limit_train_batches=None,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out), "name": "csv"},
        },
        callbacks=[checkpoint_every_step(out)],
    )


def cssa(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cssa_lightning", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def step_checkpoints(out: Path) -> list[int]:
    # Complete checkpoints only, not the temporary files of a write in progress.
    names = (p.name for p in (out / "checkpoints").glob("epoch=*-step=*.ckpt"))
    return sorted(int(re.fullmatch(r"epoch=\d+-step=(\d+)\.ckpt", n).group(1)) for n in names)


def validation_rows(out: Path) -> dict[int, dict[str, str]]:
    rows = {}
    for metrics in sorted(out.glob("csv/version_*/metrics.csv")):
        for row in csv.DictReader(metrics.open()):
            if row.get("val/mAP"):
                rows[int(row["epoch"])] = {k: v for k, v in row.items() if k.startswith("val/")}
    return rows


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): bit-identical sums
    yield
    torch.set_num_threads(threads)


def test_sigkill_then_resume_is_bit_identical(
    tmp_path, image_folders, tiny_clip_dir, one_thread, request
):
    # The killed run is a real `cssa fit` process; the uninterrupted and the resumed runs go
    # through the same CLI in this process (it saves two interpreter start-ups).
    killed = tmp_path / "killed"
    config = resume_config(killed, image_folders, tiny_clip_dir)
    process = cssa("fit", "--config", str(config))
    request.addfinalizer(process.kill)  # never leave it running if the test fails
    whole = tmp_path / "whole"
    build_cli(["fit", "--config", str(resume_config(whole, image_folders, tiny_clip_dir))])
    # 9 steps per epoch, 18 in all: kill in the second epoch (the first after the warm-up).
    deadline = time.monotonic() + 900
    while not any(step >= 11 for step in step_checkpoints(killed)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last_step = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    # (last.ckpt is written just after the step file: it may be one step behind the poll)
    assert 10 <= last_step < 18, last_step  # killed mid-epoch, not after the run
    build_cli(["fit", "--config", str(config), "--ckpt_path", "last"])

    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 18
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, differ  # student, teacher, thresholds, score memory, contexts, priors
    assert any(k.startswith("teacher.") for k in a["state_dict"])
    assert any(k.startswith("pseudo_labeller.") for k in a["state_dict"])
    whole_val, killed_val = validation_rows(whole), validation_rows(killed)
    assert set(whole_val) == {0, 1}
    assert killed_val[1] == whole_val[1]  # the interrupted (and last) epoch


def test_stream_order_is_seeded_resumable_and_split_between_processes():
    sampler = StreamSampler(10, 24, seed=5, stream=1)
    sampler.set_epoch(2)
    order = list(sampler)
    assert len(order) == 24 and sorted({i for i, _ in order}) == list(range(10))
    again = StreamSampler(10, 24, seed=5, stream=1)
    again.set_epoch(2)
    assert list(again) == order
    again.set_epoch(3)
    assert list(again) != order
    # Resumed after 7 items of epoch 2: the rest of the same order; later epochs whole.
    resumed = StreamSampler(10, 24, seed=5, stream=1)
    resumed.skip, resumed.resume_epoch = 7, 2
    resumed.set_epoch(2)
    assert list(resumed) == order[7:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == 24
    # Two processes: the union of their i-th batches (of 3) is the one-process i-th batch (of 6).
    ranks = [StreamSampler(10, 24, 5, 1, rank=r, world_size=2) for r in (0, 1)]
    for rank in ranks:
        rank.set_epoch(2)
    parts = [list(rank) for rank in ranks]
    for i in range(4):
        together = parts[0][3 * i : 3 * i + 3] + parts[1][3 * i : 3 * i + 3]
        assert sorted(together) == sorted(order[6 * i : 6 * i + 6])


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentations_do_not_depend_on_workers(image_folders, workers):
    def first_batches(num_workers):
        torch.manual_seed(11)
        datamodule = MultiLabelDataModule(
            str(image_folders["train"]),
            labeled_ratio=0.25,
            image_size=32,
            labeled_batch_size=4,
            unlabeled_batch_size=8,
            num_workers=num_workers,
        )
        datamodule.setup("fit")
        batches = []
        for batch in datamodule.train_dataloader():
            batch = batch[0] if isinstance(batch, tuple) else batch
            batches.append(batch)
            if len(batches) == 3:
                break
        return batches

    reference, other = first_batches(1), first_batches(workers)
    for one, two in zip(reference, other, strict=True):
        for stream in ("labeled", "unlabeled"):
            for key, value in one[stream].items():
                assert torch.equal(value, two[stream][key]), (stream, key)
    assert not np.array_equal(
        reference[0]["unlabeled"]["image_weak"], reference[0]["unlabeled"]["image_strong"]
    )
