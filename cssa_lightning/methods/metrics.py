"""Multi-label evaluation: mAP (macro over classes), CF1 and OF1, all x100.

The average precision is exact (the step-wise definition of scikit-learn's
``average_precision_score``, tied scores grouped into one threshold) and vectorised over
classes: one sort of the ``(C, N)`` scores and a few cumulative sums, on whatever device the
scores live (on the CPU: one float32 sort per class and binary searches). Classes with no positive in the evaluated images have no defined AP; they are
left out of the macro mean and listed once in the log, rather than counted as AP 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

log = logging.getLogger(__name__)


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Exact average precision of each class, ``(C,)`` float64.

    Equal to ``sklearn.metrics.average_precision_score(targets[:, k], scores[:, k])`` for every
    class ``k`` with a positive: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score
    thresholds, from the highest down, where tied scores form one threshold.

    Args:
        scores: ``(N, C)`` scores; compared as float32 (higher means more likely positive).
        targets: ``(N, C)`` binary targets (0/1, bool or integer or float).

    Returns:
        The AP of each class; ``nan`` for a class with no positive among the ``N`` images.

    Raises:
        ValueError: The shapes differ or a score is NaN.
    """
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and targets must both be (N, C), got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    num_images, num_classes = scores.shape
    device = scores.device
    if num_images == 0:
        return torch.full((num_classes,), float("nan"), dtype=torch.float64, device=device)
    scores, targets = scores.detach(), targets.detach()
    host_scores = scores.float().numpy() if device.type == "cpu" else None
    if np.isnan(host_scores).any() if host_scores is not None else torch.isnan(scores).any():
        raise ValueError("scores contain NaN: average precision is undefined")
    if device.type == "cpu":
        # numpy's SIMD sort of float32 and its binary searches beat torch's on CPU.
        return torch.from_numpy(_average_precision_numpy(host_scores, targets.numpy() > 0))
    # On an accelerator: sort one int64 key per (class, image), the score's order-preserving
    # bit pattern with the target in the lowest bit (faster than an argsort + gather).
    keys = torch.sort(_sort_keys(scores, targets), dim=1).values
    return _ascending_average_precision(keys.reshape(-1), num_images)


def _ascending_average_precision(keys: Tensor, num_images: int) -> Tensor:
    """AP per class from the flattened ``(C, N)`` keys, each row sorted ascending.

    Each positive contributes the precision at its score threshold: among the images scored at
    least as high as it (from the start of its tie group to the row's end), the positive share.
    Only positives and tie-group starts are visited, never a cumulative sum over all images.
    """
    num_classes = keys.numel() // num_images
    positives = torch.nonzero(keys & 1).flatten()
    scores_only = keys | 1
    group_start = torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    group_start[1:] = scores_only[1:] != scores_only[:-1]
    group_start[::num_images] = True  # rows never share a group
    starts = torch.nonzero(group_start).flatten()
    first = starts[torch.searchsorted(starts, positives, right=True) - 1]
    row = torch.div(positives, num_images, rounding_mode="floor")
    row_end = (row + 1) * num_images
    positives_above = torch.searchsorted(positives, row_end) - torch.searchsorted(positives, first)
    precision = positives_above.double() / (row_end - first).double()
    total = torch.bincount(row, weights=precision, minlength=num_classes)
    count = torch.bincount(row, minlength=num_classes).double()
    return torch.where(count > 0, total / count.clamp(min=1), float("nan"))


def _average_precision_numpy(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """:func:`average_precision` of ``(N, C)`` float32 scores and bool targets, on the CPU.

    Each positive contributes the precision at its score threshold (ties included):
    ``#positives scoring >= s / #images scoring >= s``, both counted by a binary search, in the
    class's sorted scores and in its sorted positive scores. One float32 sort per class is the
    only pass over every image.
    """
    num_images, num_classes = scores.shape
    by_class = np.ascontiguousarray(scores.T)
    ranked = np.sort(by_class, axis=1)
    result = np.full(num_classes, np.nan)
    for k, column in enumerate(np.ascontiguousarray(positive.T)):
        hits = np.sort(by_class[k][column])
        if len(hits):
            images_above = num_images - np.searchsorted(ranked[k], hits, side="left")
            hits_above = len(hits) - np.searchsorted(hits, hits, side="left")
            result[k] = np.mean(hits_above / images_above)
    return result


def _sort_keys(scores: Tensor, targets: Tensor) -> Tensor:
    """``(C, N)`` int64 keys ordered as the float32 scores, the binary target in bit 0."""
    # + 0.0 turns -0.0 into +0.0, which compare equal and must tie.
    bits = (scores.float() + 0.0).T.contiguous().view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return (ordered << 1) | (targets.T > 0).to(torch.int64)


def mean_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Macro mAP over the classes that have a positive (``nan`` if none has), float64."""
    return average_precision(scores, targets).nanmean()


class MultiLabelScores(Metric):
    """Every score and target of an evaluation, and the metrics computed once from them.

    The states are ``cat`` lists, so torchmetrics gathers them from every process before
    ``compute``. ``compute`` returns ``AP`` (per class, ``nan`` where a class has no positive,
    see :func:`average_precision`), ``CP`` and ``CR`` (per-class precision and recall of the
    decisions ``score >= threshold`` averaged over classes, 0 where undefined) and ``OF1``
    (micro F1 of all decisions), as fractions.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_labels: int, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.threshold = threshold
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        if scores.ndim != 2 or scores.shape[1] != self.num_labels or scores.shape != targets.shape:
            raise ValueError(
                f"expected scores and targets of shape (N, {self.num_labels}), got "
                f"{tuple(scores.shape)} and {tuple(targets.shape)}"
            )
        self.scores.append(scores.detach().float())
        # uint8 keeps the gathered state small (a 40k x 80 split is 3 MB).
        self.targets.append((targets.detach() > 0).to(torch.uint8))

    def compute(self) -> dict[str, Tensor]:
        # After a distributed sync the list states are already concatenated tensors.
        if isinstance(self.scores, list) and not self.scores:
            nan = torch.full((self.num_labels,), float("nan"), dtype=torch.float64)
            return {"AP": nan, "CP": nan[0], "CR": nan[0], "OF1": nan[0]}
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        predicted = scores >= self.threshold
        positive = targets.bool()
        tp = (predicted & positive).sum(0).double()
        fp = (predicted & ~positive).sum(0).double()
        fn = (~predicted & positive).sum(0).double()
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
        recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
        decided = 2 * tp.sum() + fp.sum() + fn.sum()
        overall_f1 = 2 * tp.sum() / decided if decided > 0 else tp.sum() * 0
        return {
            "AP": average_precision(scores, targets),
            "CP": precision.mean(),
            "CR": recall.mean(),
            "OF1": overall_f1,
        }


class MultiLabelMetrics(nn.Module):
    """mAP, CF1 (from per-class precision and recall) and OF1 (overall), as in SSMLL papers.

    mAP is the macro mean of the exact per-class AP over the classes with at least one positive
    in the evaluated images; the others are listed in the log (once per distinct set) and in
    :attr:`excluded_classes`. CF1 is ``2 CP CR / (CP + CR)`` with CP, CR the per-class precision
    and recall averaged over classes; OF1 is the micro F1 over all (image, class) decisions at
    ``threshold``. All x100. Synchronised across processes by torchmetrics.

    Args:
        num_classes: Number of classes.
        threshold: Probability threshold of CF1 and OF1 (a score at it counts as positive).
        class_names: Names used to list the classes left out of the mAP; ``None`` lists indices.
    """

    def __init__(
        self, num_classes: int, threshold: float = 0.5, class_names: Sequence[str] | None = None
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.scores = MultiLabelScores(num_classes, threshold)
        self.excluded_classes: list[str] = []
        self._reported: set[tuple[str, ...]] = set()

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.scores.update(probs, target)

    def average_precision_per_class(self) -> Tensor:
        """AP of each class x100, ``(C,)`` float64; ``nan`` for a class with no positive."""
        return 100 * self.scores.compute()["AP"]

    def compute(self) -> dict[str, Tensor]:
        values = self.scores.compute()  # cached by torchmetrics until the next update or reset
        per_class = 100 * values["AP"]
        missing = torch.isnan(per_class).nonzero().flatten().tolist()
        names = self.class_names or [str(k) for k in range(len(per_class))]
        self.excluded_classes = [names[k] for k in missing]
        if self.excluded_classes and tuple(self.excluded_classes) not in self._reported:
            self._reported.add(tuple(self.excluded_classes))
            log.warning(
                "%d of %d classes have no positive in the evaluated images and are left out "
                "of the mAP: %s",
                len(missing),
                len(per_class),
                self.excluded_classes,
            )
        precision, recall = values["CP"], values["CR"]
        cf1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {
            "mAP": per_class.nanmean().float(),
            "CF1": 100 * cf1.float(),
            "OF1": 100 * values["OF1"].float(),
        }

    def reset(self) -> None:
        self.scores.reset()

    def per_class_ap(self) -> Tensor | None:
        """AP x100 of each class on what was seen since the last reset (``nan``: no positive);
        ``None`` before any update. For reports: it does not change the state."""
        if not self.scores.update_count:
            return None
        return self.average_precision_per_class()
