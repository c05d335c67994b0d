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


class EpochHistory(Callback):
    """One record per completed training epoch: pseudo-label quality, epoch losses and the
    validation mAP (the last validation's value: validate every epoch for a curve).

    Keeps the float values of ``trainer.callback_metrics`` whose keys start with one of
    ``prefixes`` (epoch values; a ``_epoch`` suffix is dropped), with ``"epoch"`` added.

    Lightning 2.x calls a callback's ``on_train_epoch_end`` *before* the LightningModule's, so
    what the module logs there (``CSSATask``'s ``pseudo/*`` values) is not yet in
    ``callback_metrics`` at that point (the previous epoch's value is). An epoch is therefore
    marked complete at ``on_train_epoch_end`` and recorded when the next epoch starts, or at
    ``on_train_end`` for the last one, when the logger connector has collected the module's
    epoch-end values too.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("pseudo/", "train/loss", "train/mask_ratio", "val/mAP"),
    ):
        self.prefixes = tuple(prefixes)
        self.history: list[dict[str, float]] = []
        self._completed: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.history, self._completed = [], None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._completed = trainer.current_epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)

    def _record(self, trainer: Trainer) -> None:
        if self._completed is None:
            return
        self.history.append({"epoch": self._completed, **self.epoch_values(trainer)})
        self._completed = None

    def epoch_values(self, trainer: Trainer) -> dict[str, float]:
        """The tracked epoch values now in ``trainer.callback_metrics``."""
        metrics = trainer.callback_metrics
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if not key.startswith(self.prefixes) or key.endswith("_step"):
                continue
            if key.endswith("_epoch"):
                values[key.removesuffix("_epoch")] = float(value)
            elif f"{key}_epoch" not in metrics:
                values[key] = float(value)
        return dict(sorted(values.items()))
