"""Distributed equivalence: two CPU processes (gloo) with half the batch each train like one
process with the whole batch: the same validation mAP (to 1e-4) and the same CAT thresholds."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cssa_lightning.cli import build_cli

from .test_resume import one_thread, resume_config  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]


def fit(out: Path, folders, clip_dir, *options: str) -> subprocess.CompletedProcess:
    config = resume_config(out, folders, clip_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cssa_lightning", "fit", "--config", str(config), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def validation_map(out: Path) -> dict[int, float]:
    values = {}
    for metrics in out.glob("csv/version_*/metrics.csv"):
        for row in csv.DictReader(metrics.open()):
            if row.get("val/mAP"):
                values[int(row["epoch"])] = (float(row["val/mAP"]), float(row["val/mAP_teacher"]))
    return values


@pytest.mark.usefixtures("one_thread")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, image_folders, tiny_clip_dir):
    # The one-process run goes through the CLI in this process (one interpreter start-up less).
    build_cli(
        ["fit", "--config", str(resume_config(tmp_path / "one", image_folders, tiny_clip_dir))]
    )
    two = fit(
        tmp_path / "two",
        image_folders,
        tiny_clip_dir,
        "--trainer.max_epochs=2",
        "--trainer.strategy=ddp_find_unused_parameters_true",  # heads idle in warm-up
        "--trainer.devices=2",
        "--data.init_args.labeled_batch_size=2",
        "--data.init_args.unlabeled_batch_size=4",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = validation_map(tmp_path / "one"), validation_map(tmp_path / "two")
    assert set(single) == set(double) == {0, 1}
    for epoch in single:
        for a, b in zip(single[epoch], double[epoch], strict=True):
            assert abs(a - b) <= 1e-4, (epoch, single[epoch], double[epoch])
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 18
    thresholds = "pseudo_labeller.thresholds"
    torch.testing.assert_close(a["state_dict"][thresholds], b["state_dict"][thresholds])
    assert torch.isfinite(a["state_dict"][thresholds]).any()
    # Every process recorded every process's teacher scores.
    for name in ("pseudo_labeller.scores", "pseudo_labeller.seen"):
        torch.testing.assert_close(a["state_dict"][name], b["state_dict"][name])
    # The weights agree too, except the attention key biases: the softmax ignores them, so their
    # gradient is rounding noise that Adam scales up to full-size steps, differently per run.
    for name, value in a["state_dict"].items():
        if value.is_floating_point() and not re.search(r"k_proj\.bias", name):
            torch.testing.assert_close(value, b["state_dict"][name], atol=1e-4, rtol=1e-4)
