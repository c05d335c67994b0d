"""Exact mAP against scikit-learn (ties, no-positive classes) and across two processes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score

from cssa_lightning.methods.metrics import (
    MultiLabelMetrics,
    MultiLabelScores,
    average_precision,
    mean_average_precision,
)


def _sklearn_per_class(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array(
        [
            average_precision_score(targets[:, k], scores[:, k]) if targets[:, k].any() else np.nan
            for k in range(targets.shape[1])
        ]
    )


def _tied_problem(seed: int, n: int = 300, c: int = 7, levels: int = 6):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.25).astype(np.int64)
    # Few distinct score values: many ties, within and across positives and negatives.
    scores = np.round((targets * 0.3 + rng.random((n, c)) * 0.7) * levels) / levels
    return scores.astype(np.float32), targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_scikit_learn_with_ties(seed):
    scores, targets = _tied_problem(seed)
    assert len(np.unique(scores)) <= 7  # the test is about ties
    ours = average_precision(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    np.testing.assert_allclose(ours, _sklearn_per_class(targets, scores), atol=1e-9)


def test_average_precision_continuous_scores_and_edge_columns():
    rng = np.random.default_rng(5)
    targets = (rng.random((500, 6)) < 0.1).astype(np.int64)
    scores = rng.random((500, 6)).astype(np.float32)
    scores[:, 1] = 0.5  # every score tied: AP is the class prior
    targets[:, 2] = 0
    targets[17, 2] = 1  # one positive
    targets[:, 3] = 1  # only positives
    ours = average_precision(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    expected = _sklearn_per_class(targets, scores)
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    assert ours[1] == pytest.approx(targets[:, 1].mean())
    assert ours[3] == pytest.approx(1.0)


def test_no_positive_class_is_nan_and_left_out_of_the_mean():
    scores, targets = _tied_problem(3, c=5)
    targets[:, [1, 4]] = 0
    ours = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert torch.isnan(ours[[1, 4]]).all() and not torch.isnan(ours[[0, 2, 3]]).any()
    expected = np.mean(_sklearn_per_class(targets, scores)[[0, 2, 3]])
    assert mean_average_precision(
        torch.from_numpy(scores), torch.from_numpy(targets)
    ).item() == pytest.approx(expected, abs=1e-9)


def test_average_precision_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        average_precision(torch.rand(4, 3), torch.ones(4, 2))


def test_metric_accumulates_batches_and_lists_excluded_classes_once(caplog):
    scores, targets = _tied_problem(4, n=200, c=4)
    targets[:, 2] = 0
    metrics = MultiLabelMetrics(4, class_names=["cat", "dog", "kite", "zebra"])
    with caplog.at_level(logging.WARNING, logger="cssa_lightning.methods.metrics"):
        for _ in range(2):  # two epochs: the same missing class is reported once
            metrics.update(torch.from_numpy(scores[:130]), torch.from_numpy(targets[:130]))
            metrics.update(torch.from_numpy(scores[130:]), torch.from_numpy(targets[130:]))
            values = metrics.compute()
            per_class = metrics.average_precision_per_class()
            metrics.reset()
    expected = _sklearn_per_class(targets, scores)
    np.testing.assert_allclose(per_class.numpy(), 100 * expected, atol=1e-6)
    assert values["mAP"].item() == pytest.approx(100 * np.nanmean(expected), abs=1e-4)
    assert metrics.excluded_classes == ["kite"]
    warnings = [r for r in caplog.records if "left out of the mAP" in r.getMessage()]
    assert len(warnings) == 1 and "kite" in warnings[0].getMessage()


def _distributed_worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    scores, targets = _tied_problem(6, n=150, c=5)
    part = slice(0, 90) if rank == 0 else slice(90, None)  # uneven shards
    metric = MultiLabelScores(5)
    metric.update(torch.from_numpy(scores[part]), torch.from_numpy(targets[part]))
    results[rank] = metric.compute()["AP"].numpy()
    dist.destroy_process_group()


def test_metric_gathers_scores_from_every_process(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    scores, targets = _tied_problem(6, n=150, c=5)
    expected = _sklearn_per_class(targets, scores)
    for rank in (0, 1):
        np.testing.assert_allclose(results[rank], expected, atol=1e-9)


def test_logits_with_signed_zeros_and_the_accelerator_code_path():
    from cssa_lightning.methods.metrics import _ascending_average_precision, _sort_keys

    rng = np.random.default_rng(7)
    targets = (rng.random((400, 5)) < 0.2).astype(np.int64)
    logits = np.round(rng.normal(size=(400, 5)) + targets, 1).astype(np.float32)
    logits[:40, 0] = -0.0  # compares equal to +0.0: one tie group with the zeros below
    logits[40:60, 0] = 0.0
    expected = _sklearn_per_class(targets, logits)
    ours = average_precision(torch.from_numpy(logits), torch.from_numpy(targets))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-9)
    # The torch-only path that GPUs take, run here on CPU tensors.
    keys = torch.sort(_sort_keys(torch.from_numpy(logits), torch.from_numpy(targets)), 1).values
    np.testing.assert_allclose(
        _ascending_average_precision(keys.reshape(-1), 400).numpy(), expected, atol=1e-9
    )
    bf16 = torch.from_numpy(logits).bfloat16()
    assert torch.isfinite(average_precision(bf16, torch.from_numpy(targets))).all()


def test_nan_scores_are_rejected():
    scores = torch.rand(10, 2)
    scores[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        average_precision(scores, torch.ones(10, 2))
