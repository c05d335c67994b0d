"""A diagnostic row for the quality benchmark: CAP whose pseudo-labels are the hidden labels.

The unlabeled images' true labels (which the data module keeps for monitoring only) replace the
teacher's pseudo-labels, every entry trusted. Everything else is CAP's: the weak-view labeled
loss, the strong-view consistency loss, its weight and schedule. The row is the ceiling of
self-training with perfect pseudo-labels under the benchmark's strong view, so that CAP's gap to
supervised+EMA can be split into what its pseudo-labels cost and what its consistency setup
costs. Never a method to deploy: it reads labels the method must not see.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cssa_lightning.methods.mean_teacher import MeanTeacherTask
from cssa_lightning.methods.pseudo_labels import PseudoLabels


class HiddenLabelsCAP(MeanTeacherTask):
    """CAP with the unlabeled images' hidden labels as its pseudo-labels (diagnostic only).

    Args:
        wrong_fraction: Errors put into the hidden labels, per class and step: this fraction of
            the positives is dropped and as many negatives (in expectation) turned positive, so
            that precision and recall are both about ``1 - wrong_fraction`` (CAT's pseudo-labels
            have precision ≈ recall, ≈ 0.55 on world v4). Drawn from a generator of its own,
            seeded by the step, so the run's other random draws are untouched.
        **kwargs: Options of :class:`MeanTeacherTask`.
    """

    _hidden: Tensor | None = None

    def __init__(self, class_names: list[str], wrong_fraction: float = 0.0, **kwargs: Any):
        if not 0.0 <= wrong_fraction < 1.0:
            raise ValueError(f"wrong_fraction must be in [0, 1), got {wrong_fraction}")
        super().__init__(class_names, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        unlabeled = batch.get("unlabeled")
        self._hidden = None if unlabeled is None else unlabeled["target"]
        return super().training_step(batch, batch_idx)

    def pseudo_labels(self, probs: Tensor) -> PseudoLabels:
        if self._hidden is None:
            return super().pseudo_labels(probs)
        labels = self._hidden.to(probs.device, torch.float32)
        labels = with_errors(labels, self.hparams.wrong_fraction, self.global_step)
        return PseudoLabels(labels, torch.ones_like(labels))


def with_errors(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """``(B, C)`` 0/1 labels with ``fraction`` of each class's positives dropped and as many
    negatives, in expectation, turned positive."""
    if fraction == 0.0:
        return labels
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(labels.shape, generator=generator).to(labels.device)
    positives = labels.sum(0, keepdim=True)
    negatives = (1 - labels).sum(0, keepdim=True).clamp(min=1)
    false_positive_rate = (fraction * positives / negatives).clamp(max=1.0)
    kept = (labels > 0) & (draws >= fraction)
    added = (labels == 0) & (draws < false_positive_rate)
    return (kept | added).to(labels.dtype)
