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
    """CAP with the unlabeled images' hidden labels as its pseudo-labels (diagnostic only)."""

    _hidden: Tensor | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        unlabeled = batch.get("unlabeled")
        self._hidden = None if unlabeled is None else unlabeled["target"]
        return super().training_step(batch, batch_idx)

    def pseudo_labels(self, probs: Tensor) -> PseudoLabels:
        if self._hidden is None:
            return super().pseudo_labels(probs)
        labels = self._hidden.to(probs.device, torch.float32)
        return PseudoLabels(labels, torch.ones_like(labels))
