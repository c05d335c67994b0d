"""Callbacks beyond Lightning's own; the only module that imports ``wandb`` (lazily)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from cssa_lightning.methods.cssa import CSSATask
from cssa_lightning.methods.monitoring import PseudoLabelMonitor, PseudoLabelSource
from cssa_lightning.methods.options import lookup

log = logging.getLogger(__name__)


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
    what the module logs there (a mean-teacher task's ``pseudo/*`` values) is not yet in
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


class PerClassTestAP(Callback):
    """Keeps the test AP of every class, per evaluated score (``""`` student, ``"_teacher"``).

    ``per_class_ap[suffix]`` maps class name to AP x100 (``nan``: no positive in the test
    images); read it after ``trainer.test``. The task resets its metrics in its own
    ``on_test_epoch_end``, which Lightning calls after a callback's, so this reads them first.
    """

    def __init__(self) -> None:
        self.per_class_ap: dict[str, dict[str, float | None]] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.per_class_ap = {}

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = list(getattr(pl_module, "class_names", []))
        self.per_class_ap = {
            suffix: dict(zip(names, values, strict=True))
            for suffix, values in per_class_test_ap(pl_module).items()
        }


def per_class_test_ap(pl_module: LightningModule) -> dict[str, list[float | None]]:
    """The test AP x100 of every class (``None``: no positive), per evaluated score set, from
    the task's test metrics. Call it from a callback's ``on_test_epoch_end``: Lightning calls
    the task's own hook, which computes and resets the metrics, after the callbacks'."""
    metrics = getattr(pl_module, "metrics", {})
    per_class = {}
    for suffix in getattr(pl_module, "evaluated_scores", ("",)):
        metric = metrics[f"test{suffix}"] if f"test{suffix}" in metrics else None
        values = metric.per_class_ap() if hasattr(metric, "per_class_ap") else None
        if values is not None:
            per_class[suffix] = _floats(values.cpu())
    return per_class


class ContextAgreement(Callback):
    """How well the contexts a task identified agree with the true ones, when the data module
    knows them (the synthetic world's ``true_class_contexts``: each class's most frequent
    context).

    At the start of training, once CSSA has clustered the labeled co-occurrence into
    ``class_to_context``, it computes the adjusted Rand index of the two partitions of the
    classes (1: the same grouping up to names; about 0: chance), keeps it as ``ari``, logs it
    as ``contexts/ARI`` and in the run log. Tasks without contexts, and data without true
    contexts, are left alone (``ari`` stays ``None``).
    """

    def __init__(self) -> None:
        self.ari: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        truth = getattr(trainer.datamodule, "true_class_contexts", None)
        found = getattr(pl_module, "class_to_context", None)
        if truth is None or found is None or not lookup(pl_module.hparams, "context.enabled"):
            return
        from sklearn.metrics import adjusted_rand_score

        self.ari = float(adjusted_rand_score(truth(), found.tolist()))
        log.info("contexts: adjusted Rand index against the true contexts %.3f", self.ari)
        for logger in trainer.loggers:
            logger.log_metrics({"contexts/ARI": self.ari}, step=trainer.global_step)


class RunReport(Callback):
    """Per-class tables and figures of a run: in W&B when a logger is a ``WandbLogger``, and as
    files (``report/data.json``, PNGs, ``report.md``) in the run folder for every logger.

    What it records (W&B keys in brackets):

    - at the start of training: the classes with their labeled prior and context
      (``contexts/classes`` table) and the labeled co-occurrence affinity as a heat-map
      (``contexts/affinity``), for tasks with contexts;
    - each epoch: per-class thresholds against priors and per-class pseudo-label precision /
      recall against the hidden labels (``pseudo/per_class`` table, ``pseudo/per_class_plot``),
      and a few unlabeled images with their weak and strong views, teacher pseudo-labels and
      hidden labels (``pseudo/examples`` table), for tasks with a teacher and thresholds;
    - at the end of test: per-class AP of every score set (student, teacher) with the class
      prior (``test/per_class`` table, ``test/per_class_ap`` plot) and the test metrics in the
      run summary; the summary of ``val/mAP`` and ``val/mAP_teacher`` is their maximum.

    Per-class pseudo-label quality comes from the fit's
    :class:`~cssa_lightning.methods.monitoring.PseudoLabelMonitor` (every mean-teacher task adds one):
    its counts of every training batch, the same that give ``pseudo/precision`` and
    ``pseudo/recall``. The examples' pseudo-labels are those the step returned
    (``outputs["pseudo_labels"]``). The hidden labels are for monitoring only. Learning rates
    are kept for the file report every ``trainer.log_every_n_steps`` steps; in W&B, add
    Lightning's ``LearningRateMonitor``.

    Args:
        num_examples: Unlabeled images shown per epoch; 0 for none.
        write_files: Write ``report/`` (data, figures, Markdown) in the run folder.
    """

    def __init__(self, num_examples: int = 8, write_files: bool = True):
        if num_examples < 0:
            raise ValueError(f"RunReport: num_examples must be >= 0, got {num_examples}")
        self.num_examples = num_examples
        self.write_files = write_files
        self.data: dict[str, Any] = {}
        self._completed: int | None = None
        self._test_ap: dict[str, list[float | None]] = {}

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def wandb_loggers(trainer: Trainer) -> list[Any]:
        from lightning.pytorch.loggers import WandbLogger

        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.data.get("class_names") == list(pl_module.class_names):
            return
        self.data = {
            "class_names": list(pl_module.class_names),
            "priors": _floats(self._priors(trainer, pl_module)),
            "run": self._run_info(trainer, pl_module),
            "contexts": None,
            "epochs": [],
            "validation": [],
            "learning_rates": [],
            "examples": [],
            "best": {},
            "test": None,
        }
        for logger in self.wandb_loggers(trainer):
            for key in ("val/mAP", "val/mAP_teacher"):
                logger.experiment.define_metric(key, summary="max")

    @staticmethod
    def _priors(trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        priors = pl_module.class_priors if isinstance(pl_module, PseudoLabelSource) else None
        if priors is not None and bool(priors.sum() > 0):
            return priors.detach().cpu()
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "labeled_targets"):
            return torch.as_tensor(datamodule.labeled_targets()).mean(0)
        return torch.full((len(pl_module.class_names),), float("nan"))

    @staticmethod
    def _run_info(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        hp = getattr(getattr(trainer, "datamodule", None), "hparams", {}) or {}
        info = {
            "task": type(pl_module).__name__,
            "max_epochs": trainer.max_epochs,
            "warmup_epochs": getattr(pl_module, "hparams", {}).get("warmup_epochs"),
            "labeled_ratio": hp.get("labeled_ratio"),
            "seed": os.environ.get("PL_GLOBAL_SEED"),
        }
        if trainer.is_global_zero:
            from cssa_lightning.reporting.run_files import provenance

            info["commit"] = provenance().get("git_commit")
        wandb_loggers = RunReport.wandb_loggers(trainer)
        if wandb_loggers and trainer.is_global_zero:
            info["name"] = wandb_loggers[0].experiment.name
        return info

    def _folder(self, trainer: Trainer) -> Path:
        from cssa_lightning.reporting.run_files import run_directory

        return run_directory(trainer) / "report"

    def _save(self, trainer: Trainer, figures: bool) -> None:
        """Write ``data.json`` (and with ``figures`` the PNGs and ``report.md``)."""
        if not (self.write_files and trainer.is_global_zero and self.data):
            return
        from cssa_lightning.reporting.report import DATA_FILE, write_report

        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.data["run"]["folder"] = str(folder.parent)
        (folder / DATA_FILE).write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        if figures:
            path = write_report(folder)
            log.info("run report written to %s", path)

    def _log_image(self, trainer: Trainer, key: str, figure: Any) -> None:
        from cssa_lightning.reporting.report import figure_to_image

        loggers = self.wandb_loggers(trainer) if trainer.is_global_zero else []
        if loggers:
            image = figure_to_image(figure)
            for logger in loggers:
                logger.log_image(key, [image], step=trainer.global_step)

    def _log_table(self, trainer: Trainer, key: str, columns: list[str], rows: list[list]) -> None:
        for logger in self.wandb_loggers(trainer) if trainer.is_global_zero else []:
            logger.log_table(key, columns=columns, data=rows, step=trainer.global_step)

    # -- fit ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module)
        self._completed = None
        if not (isinstance(pl_module, CSSATask) and pl_module.context_options.enabled):
            return
        from cssa_lightning.methods.contexts import cooccurrence_affinity
        from cssa_lightning.reporting.report import figure_affinity

        labeled = np.asarray(trainer.datamodule.labeled_targets())
        affinity = cooccurrence_affinity(labeled)
        contexts = pl_module.class_to_context.detach().cpu().tolist()
        self.data["contexts"] = {
            "class_to_context": contexts,
            "affinity": np.round(np.asarray(affinity, dtype=float), 5).tolist(),
        }
        names, priors = self.data["class_names"], self.data["priors"]
        counts = labeled.sum(0).astype(int).tolist()
        self._log_table(
            trainer,
            "contexts/classes",
            ["class", "context", "prior", "labeled images", "context classes"],
            [
                [
                    name,
                    c,
                    p,
                    n,
                    ", ".join(m for m, k in zip(names, contexts, strict=True) if k == c),
                ]
                for name, c, p, n in zip(names, contexts, priors, counts, strict=True)
            ],
        )
        if self.wandb_loggers(trainer):
            self._log_image(
                trainer, "contexts/affinity", figure_affinity(names, affinity, contexts)
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            if optimizer is not None:
                self.data["learning_rates"].append(
                    {
                        "step": trainer.global_step,
                        "lr": [g["lr"] for g in optimizer.param_groups],
                        "names": [
                            g.get("name", f"group {i}")
                            for i, g in enumerate(optimizer.param_groups)
                        ],
                    }
                )
        unlabeled = batch.get("unlabeled") if isinstance(batch, dict) else None
        if unlabeled is None or batch_idx != 0 or self.num_examples == 0:
            return
        if not (isinstance(outputs, dict) and "pseudo_labels" in outputs):
            return
        if "target" not in unlabeled:
            return  # a streamed pool has no hidden labels to show beside the pseudo-labels
        if trainer.is_global_zero:
            labels = outputs["pseudo_labels"][: self.num_examples]
            target = unlabeled["target"][: len(labels)].to(labels.device)
            self._examples(trainer, unlabeled, labels, target)

    def _examples(self, trainer: Trainer, unlabeled: dict, labels: Tensor, target: Tensor) -> None:
        from cssa_lightning.reporting.report import figure_examples

        names = self.data["class_names"]
        mean, std = _normalisation(trainer)
        n = len(labels)
        weak = [_to_uint8(x, mean, std) for x in unlabeled["image_weak"][:n]]
        strong = [_to_uint8(x, mean, std) for x in unlabeled["image_strong"][:n]]
        pseudo = [[names[k] for k in row.nonzero().flatten().tolist()] for row in labels]
        hidden = [[names[k] for k in row.nonzero().flatten().tolist()] for row in target[:n]]
        epoch = trainer.current_epoch
        loggers = self.wandb_loggers(trainer)
        if loggers:
            import wandb

            rows = []
            for i in range(n):
                p, h = set(pseudo[i]), set(hidden[i])
                rows.append(
                    [
                        epoch,
                        wandb.Image(weak[i]),
                        wandb.Image(strong[i]),
                        ", ".join(pseudo[i]),
                        ", ".join(hidden[i]),
                        ", ".join(sorted(h - p)),
                        ", ".join(sorted(p - h)),
                    ]
                )
            columns = [
                "epoch",
                "weak",
                "strong",
                "pseudo-labels",
                "hidden labels",
                "missed",
                "wrong",
            ]
            self._log_table(trainer, "pseudo/examples", columns, rows)
        figure = figure_examples(weak, strong, pseudo, hidden, epoch)
        # Also as one image: a table's images live in its artifact, not in the run's files.
        self._log_image(trainer, "pseudo/examples_grid", figure)
        if self.write_files:
            folder = self._folder(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            file_name = f"examples_epoch{epoch}.png"
            figure.savefig(folder / file_name, dpi=110)
            self.data["examples"].append({"epoch": epoch, "file": file_name})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The task refreshes its thresholds in its own on_train_epoch_end, which Lightning calls
        # after this one: the epoch is recorded at the next epoch start or at the end of fit.
        self._completed = trainer.current_epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)
        self._save(trainer, figures=True)

    def _finish_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._completed is None:
            return
        epoch, self._completed = self._completed, None
        monitors = [c for c in trainer.callbacks if isinstance(c, PseudoLabelMonitor)]
        counts = monitors[0].per_class if monitors else None
        record: dict[str, Any] = {"epoch": epoch, "step": trainer.global_step}
        for key in ("pseudo/precision", "pseudo/recall", "pseudo/F1", "train/loss_epoch"):
            if key in trainer.callback_metrics:
                record[key.removesuffix("_epoch")] = float(trainer.callback_metrics[key])
        thresholds = (
            pl_module.pseudo_labeller.thresholds
            if isinstance(pl_module, PseudoLabelSource)
            else None
        )
        if thresholds is not None and counts is not None:
            positives, predicted, correct, images = counts.cpu()
            record["thresholds"] = _floats(thresholds.detach().cpu())
            record["precision"] = _floats(100 * correct / predicted)
            record["recall"] = _floats(100 * correct / positives)
            record["pseudo_rate"] = _floats(predicted / images)
            record["hidden_rate"] = _floats(positives / images)
            record["images"] = int(images[0])
        self.data["epochs"].append(record)
        if "thresholds" in record and trainer.is_global_zero and self.wandb_loggers(trainer):
            from cssa_lightning.reporting.report import figure_pseudo_labels

            names, priors = self.data["class_names"], self.data["priors"]
            columns = ["epoch", "class", "prior", "threshold", "precision", "recall"]
            columns += ["pseudo-positive rate", "hidden positive rate"]
            rows = [
                [epoch, names[k], priors[k], *(record[c][k] for c in _PER_CLASS)]
                for k in range(len(names))
            ]
            self._log_table(trainer, "pseudo/per_class", columns, rows)
            figure = figure_pseudo_labels(
                names, priors, record["thresholds"], record["precision"], record["recall"], epoch
            )
            self._log_image(trainer, "pseudo/per_class_plot", figure)
        self._save(trainer, figures=False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.data:
            return
        metrics = trainer.callback_metrics
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key in ("val/mAP", "val/mAP_teacher"):
            if key in metrics:
                record[key] = float(metrics[key])
                best = self.data["best"].get(key)
                if best is None or record[key] > best["value"]:
                    self.data["best"][key] = {"value": record[key], "epoch": trainer.current_epoch}
        self.data["validation"].append(record)

    # -- test --------------------------------------------------------------------------------------
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module)
        self._test_ap = {}

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_ap.update(per_class_test_ap(pl_module))

    def _tested_epoch(self, trainer: Trainer) -> int | None:
        """The 0-based epoch of the tested weights: the checkpoint's, else (the weights in
        memory after fit) the last validated epoch."""
        if trainer.ckpt_path:
            try:
                # Memory-mapped: the epoch is read, not the weights.
                stored = torch.load(
                    trainer.ckpt_path, map_location="cpu", weights_only=True, mmap=True
                )
                return int(stored["epoch"])
            except Exception:  # noqa: BLE001 - a report without the epoch, not a failed test
                return None
        validation = self.data.get("validation") or []
        return validation[-1]["epoch"] if validation else None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        test_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
        }
        self.data["test"] = {
            "metrics": test_metrics,
            "per_class_ap": self._test_ap,
            "checkpoint": trainer.ckpt_path,
            "epoch": self._tested_epoch(trainer),
        }
        loggers = self.wandb_loggers(trainer) if trainer.is_global_zero else []
        if loggers and self._test_ap:
            from cssa_lightning.reporting.report import SCORE_LABELS, figure_test_ap

            names, priors = self.data["class_names"], self.data["priors"]
            contexts = (self.data.get("contexts") or {}).get("class_to_context")
            suffixes = list(self._test_ap)
            columns = ["class", "prior", *(f"AP {SCORE_LABELS.get(s, s)}" for s in suffixes)]
            columns += ["context"] if contexts else []
            rows = [
                [
                    names[k],
                    priors[k],
                    *(self._test_ap[s][k] for s in suffixes),
                    *([contexts[k]] if contexts else []),
                ]
                for k in range(len(names))
            ]
            self._log_table(trainer, "test/per_class", columns, rows)
            self._log_image(
                trainer, "test/per_class_ap", figure_test_ap(names, priors, self._test_ap)
            )
        for logger in loggers:
            logger.experiment.summary.update(test_metrics)
        self._save(trainer, figures=True)


_PER_CLASS = ("thresholds", "precision", "recall", "pseudo_rate", "hidden_rate")


def _floats(values: Tensor) -> list[float | None]:
    """JSON-safe floats: NaN and infinity become ``None``."""
    return [v if math.isfinite(v) else None for v in values.float().tolist()]


def _normalisation(trainer: Trainer) -> tuple[Tensor, Tensor]:
    datamodule = getattr(trainer, "datamodule", None)
    mean = getattr(datamodule, "mean", (0.0, 0.0, 0.0))
    std = getattr(datamodule, "std", (1.0, 1.0, 1.0))
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


def _to_uint8(image: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """A normalised ``(3, H, W)`` image back to ``(H, W, 3)`` uint8."""
    pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
