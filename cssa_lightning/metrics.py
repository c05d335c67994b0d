"""Multi-label evaluation: mAP (macro over classes), CF1 and OF1, all x100."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat


class MultiLabelMetrics(nn.Module):
    """mAP, CF1 (from per-class precision and recall) and OF1 (overall), as in SSMLL papers.

    CF1 is ``2 CP CR / (CP + CR)`` with CP, CR the per-class precision and recall averaged over
    classes; OF1 is the micro F1 over all (image, class) decisions at ``threshold``.
    Synchronised across processes by torchmetrics.
    """

    def __init__(self, num_classes: int, threshold: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        common = dict(num_labels=num_classes, threshold=threshold)
        self.metrics = MetricCollection(
            {
                "mAP": MultilabelAveragePrecision(num_labels=num_classes, average="macro"),
                "CP": MultilabelPrecision(average="macro", **common),
                "CR": MultilabelRecall(average="macro", **common),
                "OF1": MultilabelF1Score(average="micro", **common),
            }
        )

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.metrics.update(probs.float(), target.long())

    def compute(self) -> dict[str, Tensor]:
        values = self.metrics.compute()
        precision, recall = values["CP"], values["CR"]
        cf1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {
            "mAP": 100 * values["mAP"],
            "CF1": 100 * cf1,
            "OF1": 100 * values["OF1"],
        }

    def reset(self) -> None:
        self.metrics.reset()

    def per_class_ap(self) -> Tensor | None:
        """AP x100 of each class on what was seen since the last reset (NaN: no positive);
        ``None`` before any update. For reports: it does not change the state."""
        metric = self.metrics["mAP"]
        if not metric.update_count:
            return None
        with metric.sync_context():
            preds, target = dim_zero_cat(metric.preds), dim_zero_cat(metric.target)
        ap = multilabel_average_precision(preds, target, self.num_classes, average="none")
        return (100 * ap).masked_fill(target.sum(0) == 0, float("nan"))
