"""Distributed equivalence: two CPU processes (gloo) with half the batch each, on one "machine"
or as two "nodes" of one process each, train like one process with the whole batch: the same
validation mAP (to 1e-4) and the same CAT thresholds."""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cssa_lightning.commands.cli import build_cli

from .test_resume import resume_config

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


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, image_folders, tiny_clip_dir) -> Path:
    """The reference: one process with the whole batch (through the CLI in this process, one
    interpreter start-up less; one thread, as the subprocesses)."""
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_cli(["fit", "--config", str(resume_config(out, image_folders, tiny_clip_dir))])
    finally:
        torch.set_num_threads(threads)
    return out


HALF_BATCHES = (
    "--trainer.max_epochs=2",
    # Plain ddp: cssa fit runs CSSA, whose context head is idle in the warm-up, with
    # ddp_find_unused_parameters_true (plain ddp would fail at the first step).
    "--trainer.strategy=ddp",
    "--data.init_args.labeled_batch_size=2",
    "--data.init_args.unlabeled_batch_size=4",
)


def assert_same_training(one: Path, two: Path, weights: bool = True) -> None:
    single, double = validation_map(one), validation_map(two)
    assert set(single) == set(double) == {0, 1}
    for epoch in single:
        for a, b in zip(single[epoch], double[epoch], strict=True):
            assert abs(a - b) <= 1e-4, (epoch, single[epoch], double[epoch])
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 18
    thresholds = "pseudo_labeller.thresholds"
    torch.testing.assert_close(a["state_dict"][thresholds], b["state_dict"][thresholds])
    assert torch.isfinite(a["state_dict"][thresholds]).any()
    # Every process recorded every process's teacher scores.
    for name in ("pseudo_labeller.scores", "pseudo_labeller.seen"):
        torch.testing.assert_close(a["state_dict"][name], b["state_dict"][name])
    if not weights:
        return
    # The weights agree too, except the attention key biases: the softmax ignores them, so their
    # gradient is rounding noise that Adam scales up to full-size steps, differently per run.
    for name, value in a["state_dict"].items():
        if value.is_floating_point() and not re.search(r"k_proj\.bias", name):
            torch.testing.assert_close(value, b["state_dict"][name], atol=1e-4, rtol=1e-4)


def test_two_processes_match_one_with_the_same_global_batch(
    tmp_path, image_folders, tiny_clip_dir, one_process
):
    two = fit(tmp_path / "two", image_folders, tiny_clip_dir, *HALF_BATCHES, "--trainer.devices=2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert (
        "strategy ddp -> ddp_find_unused_parameters_true: net.context_head get no gradient"
        in two.stderr + two.stdout
    )
    assert_same_training(one_process, tmp_path / "two")


def test_two_nodes_of_one_process_match_one(tmp_path, image_folders, tiny_clip_dir, one_process):
    # Two "nodes" on localhost, started as a cluster launcher (torchrun, srun) would start
    # them: the same command on each, NODE_RANK 0 and 1, one rendezvous address.
    out = tmp_path / "nodes"
    config = resume_config(out, image_folders, tiny_clip_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "cssa_lightning",
        "fit",
        "--config",
        str(config),
        *HALF_BATCHES,
        "--trainer.num_nodes=2",
        "--trainer.devices=1",
    ]
    nodes = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(rank),
        }
        nodes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err.decode()[-3000:]
    assert_same_training(one_process, out)


def test_predict_on_two_processes_writes_what_one_process_writes(
    tmp_path, trained_cssa, bare_images
):
    # Eleven files (one unreadable) over two processes: Lightning's unrepeated sampler gives
    # six to the first and five to the second; the first merges the part files by input index.
    def predict(out: Path, *options: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "cssa_lightning", "predict"]
        command += ["--ckpt_path", str(trained_cssa), "--images", str(bare_images)]
        command += ["--output", str(out), "--batch_size", "2", "--accelerator", "cpu"]
        return subprocess.run(
            [*command, "--no_progress_bar", *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    one, two = tmp_path / "one", tmp_path / "two"
    single = predict(one)
    assert single.returncode == 0, single.stderr[-3000:]
    double = predict(two, "--devices", "2")
    assert double.returncode == 0, double.stderr[-3000:]
    for name in ("predictions.csv", "predictions.jsonl", "skipped.csv"):
        assert (two / name).read_text() == (one / name).read_text(), name
    assert sorted(p.name for p in two.iterdir()) == [
        "predictions.csv",
        "predictions.jsonl",
        "skipped.csv",
    ]  # the part files are gone
    # One summary, from the first process, as with one device; two processes did the work.
    assert double.stdout.count("10 images labeled") == 1, double.stdout
    assert "thresholds: trained, 2 processes)" in double.stdout
    assert "thresholds: trained)" in single.stdout
    assert "1 unreadable images skipped" in double.stdout
