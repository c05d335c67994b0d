"""Callbacks beyond Lightning's own."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer


class FitSummary(Callback):
    """Keeps the metrics at the end of ``fit`` and the training wall time.

    ``trainer.test`` after ``fit`` replaces ``trainer.callback_metrics``; this keeps the fit
    values (losses, pseudo-label precision/recall) for scripts such as the benchmark.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.train_seconds: float | None = None
        self._start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_seconds = time.perf_counter() - self._start
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
