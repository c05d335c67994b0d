"""Pseudo-label quality against the unlabeled images' hidden labels: monitoring, never training.

:class:`PseudoLabelMonitor` is the one place that compares pseudo-labels with the labels the
unlabeled images hide (the benchmark and the demo have them; real unlabeled data has none, and
then the figures are meaningless but harmless). A mean-teacher task adds it to every fit
(``configure_callbacks``); it reads what the task publishes through :class:`PseudoLabelSource`:
the step's pseudo-labels (the training step returns them) and the pseudo-labeller's memory of
teacher scores.

Logged at each epoch end: ``pseudo/precision``, ``pseudo/recall`` and ``pseudo/F1`` (micro, over
every unlabeled image of the epoch's steps, in %) and ``pseudo/precision@R`` (threshold-free:
the precision of the remembered teacher scores at recall R). :attr:`PseudoLabelMonitor.per_class`
keeps the epoch's per-class counts for the run report.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from cssa_lightning.methods.pseudo_labels import PseudoLabeller

# Recall levels at which the precision of the teacher's scores is logged (methods with
# different thresholds are compared at the same recall).
MONITORED_RECALLS = (0.4, 0.5, 0.6, 0.7, 0.8)


@runtime_checkable
class PseudoLabelSource(Protocol):
    """What a mean-teacher task publishes for monitoring and reports: its pseudo-labeller
    (thresholds, teacher-score memory of the unlabeled images), the labeled class priors and
    its classes; its training step returns ``{"pseudo_labels": (B, C)}`` for a batch with
    unlabeled images."""

    pseudo_labeller: PseudoLabeller
    class_priors: Tensor
    class_names: list[str]


class PseudoLabelMonitor(Callback):
    """Pseudo-label precision / recall against the hidden labels, computed once per epoch.

    Attributes:
        per_class: ``(4, C)`` counts of the last completed epoch: hidden positives, pseudo-
            positives, both, and images (every process's); ``None`` before.
    """

    def __init__(self, recalls: tuple[float, ...] = MONITORED_RECALLS):
        self.recalls = tuple(recalls)
        self.per_class: Tensor | None = None
        self._counts: Tensor | None = None
        self._hidden: Tensor | None = None  # (N, C) hidden labels of the unlabeled images

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.per_class, self._counts = None, None
        labeller = _labeller(pl_module)
        if labeller is not None:
            self._hidden = torch.zeros_like(labeller.scores)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict) or "pseudo_labels" not in outputs:
            return
        unlabeled = batch["unlabeled"]
        if "target" not in unlabeled:
            return  # a streamed pool: no hidden labels to measure against
        labels = outputs["pseudo_labels"].float()
        target = unlabeled["target"].float().to(labels.device)
        counts = torch.stack(
            [
                target.sum(0),
                labels.sum(0),
                (labels * target).sum(0),
                torch.full_like(target[0], len(target)),
            ]
        )
        self._counts = counts if self._counts is None else self._counts + counts
        index = unlabeled["index"]
        if trainer.world_size > 1:  # every process keeps every process's hidden labels
            index = pl_module.all_gather(index).reshape(-1)
            target = pl_module.all_gather(target).reshape(-1, target.shape[-1])
        labeller = _labeller(pl_module)
        if self._hidden is None or labeller is None:
            return
        rows = index
        if labeller.memory_size is not None:
            # A ring of the latest rows: the rows this step's record wrote (the latest ones
            # when more arrived than it holds), so hidden labels and scores stay aligned.
            rows = labeller.last_rows
            target = target[-len(rows) :]
        self._hidden = self._hidden.to(target.device)
        self._hidden[rows] = target

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the task's own on_train_epoch_end (Lightning's order): the score memory is the
        # epoch's, the thresholds are not yet refreshed.
        counts, self._counts = self._counts, None
        if counts is None:
            return
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        self.per_class = counts.detach()
        positives, predicted, correct = counts[0].sum(), counts[1].sum(), counts[2].sum()
        precision = correct / predicted.clamp(min=1)
        recall = correct / positives.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        values = {"precision": precision, "recall": recall, "F1": f1}
        logged = {f"pseudo/{name}": 100 * value for name, value in values.items()}
        labeller = _labeller(pl_module)
        if labeller is not None and self._hidden is not None and labeller.seen.any():
            logged |= precision_at_recalls(
                labeller.scores[labeller.seen], self._hidden[labeller.seen], self.recalls
            )
        pl_module.log_dict(logged)


def _labeller(pl_module: LightningModule) -> PseudoLabeller | None:
    return pl_module.pseudo_labeller if isinstance(pl_module, PseudoLabelSource) else None


@torch.no_grad()
def precision_at_recalls(
    scores: Tensor, hidden: Tensor, recalls: tuple[float, ...]
) -> dict[str, Tensor]:
    """Threshold-free quality of ``(N, C)`` teacher scores against hidden ``(N, C)`` labels:
    ranking every (image, class) entry by score, the precision where the recall first reaches
    each level, in % (``pseudo/precision@R``; 0 when the level is never reached)."""
    order = scores.flatten().argsort(descending=True)
    hits = hidden.flatten().to(scores.device)[order].cumsum(0)
    positives = hits[-1].clamp(min=1) if len(hits) else scores.new_tensor(1.0)
    recall = hits / positives
    precision = hits / torch.arange(1, len(hits) + 1, device=hits.device)
    values = {}
    for level in recalls:
        reached = (recall >= level).nonzero()
        value = precision[reached[0, 0]] if len(reached) else precision.new_tensor(0.0)
        values[f"pseudo/precision@{round(100 * level)}"] = 100 * value
    return values
