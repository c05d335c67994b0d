"""``cssa predict``: label a folder or a list of images with a trained checkpoint.

No labels and no training config are needed: the checkpoint holds the task, its class names,
its thresholds and its eval preprocessing. ``--ckpt_path`` takes a checkpoint, a run folder (its
best checkpoint) or a directory written by ``cssa export`` (its weights and thresholds). Writes ``predictions.csv`` and ``predictions.jsonl``
(image path, predicted label names, every class probability; the EMA teacher's too for a
mean-teacher task) through a Lightning :class:`~lightning.pytorch.callbacks.BasePredictionWriter`
as the batches come, with a progress bar. An image that cannot be read is reported, listed in
``skipped.csv`` and left out; the run goes on::

    cssa predict --ckpt_path outputs/demo/.../best.ckpt --images photos/ --output predictions
    cssa predict --ckpt_path model.ckpt --images list.txt --thresholds val-f1 --val_source val/
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cssa_lightning.commands.export import CONFIG_FILE, load_exported
from cssa_lightning.commands.parsers import parse_options
from cssa_lightning.commands.trained import Preprocessing, load_trained
from cssa_lightning.data.records import build_record_table, load_image, read_source
from cssa_lightning.methods.multilabel import MultiLabelTask
from cssa_lightning.reporting.run_files import quiet_inference

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
OUTPUT_FILES = ("predictions.csv", "predictions.jsonl", "skipped.csv")
DEFAULT_THRESHOLD = 0.5


def list_images(source: str | Path) -> list[Path]:
    """The images to label.

    Args:
        source: A directory (every image file under it, recursively, sorted), a ``.csv`` with a
            ``path`` column (other columns, such as labels, are ignored), or a text file with
            one image path per line (blank lines and lines starting with ``#`` skipped).
            Relative paths in a list are resolved against the list's directory.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: It lists no image, or a CSV has no ``path`` column.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        paths = sorted(
            p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    elif source.is_file() and source.suffix.lower() == ".csv":
        with source.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{source}:1: expected a header with a 'path' column")
            paths = [source.parent / row["path"] for row in reader if row["path"]]
    elif source.is_file():
        lines = source.read_text(encoding="utf-8-sig").splitlines()
        paths = [
            source.parent / line.strip()
            for line in lines
            if line.strip() and not line.lstrip().startswith("#")
        ]
    else:
        raise FileNotFoundError(f"images {source} do not exist")
    if not paths:
        raise ValueError(f"{source} lists no image (image suffixes: {sorted(IMAGE_SUFFIXES)})")
    return paths


class ImageFiles(Dataset):
    """Image files with the eval transform; an unreadable file gives ``valid=False``."""

    def __init__(self, paths: Sequence[Path], transform: A.Compose, image_size: int):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            if not self.paths[i].is_file():
                raise ValueError(f"image {self.paths[i]} does not exist")
            image = self.transform(image=load_image({"path": str(self.paths[i])}))["image"]
            error = ""
        except ValueError as problem:
            image = torch.zeros(3, self.image_size, self.image_size)
            error = str(problem)
        return {"image": image, "index": i, "valid": not error, "error": error}


class PredictionFileWriter(BasePredictionWriter):
    """Writes each predicted batch to ``predictions.csv`` and ``predictions.jsonl``.

    In one process the rows go straight to the two files, in input order. With several
    processes (``--devices``, ``--num_nodes``) each one writes the rows of its images to its own
    part file under ``OUTPUT/.parts`` (Lightning's unrepeated sampler gives every image to exactly
    one process); after the last batch the first process merges the parts by input index into
    the same two files and removes them, so the result is the one-process result, row for row.

    Args:
        output: Directory of the files (with several nodes: a folder every node sees).
        paths: Image paths by dataset index.
        class_names: Ordered class names.
        thresholds: ``(C,)`` thresholds applied to the ``decide_by`` probabilities.
        decide_by: Key of the probabilities that decide the labels (``probs`` or
            ``probs_teacher``).
    """

    def __init__(
        self,
        output: Path,
        paths: Sequence[Path],
        class_names: Sequence[str],
        thresholds: Tensor,
        decide_by: str,
    ):
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.paths = list(paths)
        self.class_names = list(class_names)
        self.thresholds = thresholds.float().cpu()
        self.decide_by = decide_by
        self.written = 0
        self.skipped: list[tuple[str, str]] = []
        self.header: list[str] | None = None  # needs the score names of the first batch
        self.world_size = 1
        self._csv = self._jsonl = self._writer = self._part = None

    @property
    def parts(self) -> Path:
        return self.output / ".parts"

    def on_predict_start(self, trainer, pl_module) -> None:
        self.world_size = trainer.world_size
        self.output.mkdir(parents=True, exist_ok=True)
        if self.world_size > 1:
            self.parts.mkdir(exist_ok=True)
            path = self.parts / f"rank{trainer.global_rank}.jsonl"
            self._part = path.open("w", encoding="utf-8")
            return
        self._csv = (self.output / "predictions.csv").open("w", encoding="utf-8", newline="")
        self._jsonl = (self.output / "predictions.jsonl").open("w", encoding="utf-8")
        self._writer = csv.writer(self._csv)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        scores = {
            key.removeprefix("probs").lstrip("_") or "student": value.float().cpu()
            for key, value in prediction.items()
            if key.startswith("probs")
        }
        decide = prediction[self.decide_by].float().cpu()
        if self.header is None:
            self.header = ["path", "labels"]
            for name in scores:
                self.header += [f"{name}:{c}" for c in self.class_names]
            self._emit({"header": self.header})
        for row, index in enumerate(prediction["index"].tolist()):
            path = str(self.paths[index])
            if not bool(batch["valid"][row]):
                log.warning("%s (skipped)", batch["error"][row])
                self._emit({"index": index, "skipped": [path, batch["error"][row]]})
                continue
            labels = [
                name
                for name, p, t in zip(self.class_names, decide[row], self.thresholds, strict=True)
                if p >= t
            ]
            values = {name: probs[row].tolist() for name, probs in scores.items()}
            line = [path, "|".join(labels)]
            for probs in values.values():
                line += [f"{p:.6f}" for p in probs]
            item = {"path": path, "labels": labels}
            item.update(
                {
                    f"{name}_probs": dict(zip(self.class_names, probs, strict=True))
                    for name, probs in values.items()
                }
            )
            self._emit({"index": index, "csv": line, "json": item})

    def _emit(self, record: dict[str, Any]) -> None:
        """One row (or the header) to the final files, or to this process's part file."""
        if self._part is not None:
            self._part.write(json.dumps(record) + "\n")
        elif "header" in record:
            self._writer.writerow(record["header"])
        elif "skipped" in record:
            self.skipped.append(tuple(record["skipped"]))
        else:
            self._writer.writerow(record["csv"])
            self._jsonl.write(json.dumps(record["json"]) + "\n")
            self.written += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.world_size > 1:
            self._part.close()
            self._part = None
            trainer.strategy.barrier("prediction parts written")
            if trainer.global_rank == 0:
                self._merge_parts()
            trainer.strategy.barrier("prediction parts merged")
            return
        self._csv.close()
        self._jsonl.close()
        self._write_skipped()

    def _merge_parts(self) -> None:
        """The processes' part files, merged by input index into the final files (each part
        is in increasing index order, so the merge streams)."""
        parts = [self.parts / f"rank{rank}.jsonl" for rank in range(self.world_size)]
        missing = [p for p in parts if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]} is missing: with several nodes, --output must be a folder "
                "every node sees (a shared file system)"
            )
        handles = [p.open(encoding="utf-8") for p in parts]
        try:
            streams = [map(json.loads, handle) for handle in handles]
            rows = heapq.merge(*streams, key=lambda record: record.get("index", -1))
            self._csv = (self.output / "predictions.csv").open("w", encoding="utf-8", newline="")
            self._jsonl = (self.output / "predictions.jsonl").open("w", encoding="utf-8")
            self._writer = csv.writer(self._csv)
            header_written = False
            for record in rows:
                if "header" in record:
                    if not header_written:
                        self._emit(record)
                        header_written = True
                    continue
                self._emit(record)
            self._csv.close()
            self._jsonl.close()
        finally:
            for handle in handles:
                handle.close()
        self._write_skipped()
        shutil.rmtree(self.parts)

    def _write_skipped(self) -> None:
        if self.skipped:
            with (self.output / "skipped.csv").open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "error"])
                writer.writerows(self.skipped)


class ExportedTask(LightningModule):
    """A directory written by ``cssa export`` as the task ``cssa predict`` runs: the one set of
    weights it holds (the teacher's or the student's), its thresholds as the trained ones."""

    def __init__(self, directory: str | Path):
        super().__init__()
        self.model = load_exported(directory).eval()
        self.class_names = self.model.class_names
        self.register_buffer("thresholds", self.model.thresholds.clone())
        self.thresholds_ready = True
        teacher = self.model.config.get("weights") == "teacher"
        self.evaluated_scores = ("_teacher",) if teacher else ("",)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {
            f"probs{self.evaluated_scores[0]}": self.model(batch["image"]),
            "index": batch["index"],
        }


def load_for_prediction(path: str | Path) -> tuple[MultiLabelTask | ExportedTask, Preprocessing]:
    """The task and eval preprocessing of a checkpoint, a run folder or an export directory."""
    directory = Path(path).expanduser()
    if (directory / CONFIG_FILE).is_file():
        task = ExportedTask(directory)
        return task, Preprocessing.from_dict(task.model.config["preprocessing"])
    return load_trained(directory)


def choose_thresholds(
    task: MultiLabelTask,
    how: str,
    decide_by: str,
    val_source: str | None,
    preprocessing: Preprocessing,
    batch_size: int,
) -> Tensor:
    """Per-class thresholds: a number, the trained ones, or F1-optimal on labeled images.

    Args:
        how: ``"auto"`` (the trained thresholds when the checkpoint has them, else 0.5),
            ``"trained"`` (the pseudo-label thresholds a mean-teacher task learned on its
            teacher's scores), ``"val-f1"`` (per class, the threshold with the best F1 on
            ``val_source``), or a number in ``(0, 1)`` for every class.
    Classes left without a finite threshold (no positive seen) get 0.5, with a warning.
    """
    num_classes = task.num_classes
    how = resolve_thresholds(task, how)
    if how == "trained":
        if not has_trained_thresholds(task):
            raise ValueError(
                "--thresholds trained: the checkpoint has no trained thresholds "
                "(only a mean-teacher task that trained past its first epoch has them)"
            )
        thresholds = task.thresholds.detach().float().cpu().clone()
    elif how == "val-f1":
        if not val_source:
            raise ValueError("--thresholds val-f1 needs --val_source (labeled images)")
        thresholds = f1_thresholds(task, decide_by, val_source, preprocessing, batch_size)
    else:
        try:
            value = float(how)
        except ValueError:
            raise ValueError(
                f"--thresholds must be 'trained', 'val-f1' or a number, got {how!r}"
            ) from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"--thresholds must be in (0, 1), got {value}")
        thresholds = torch.full((num_classes,), value)
    unset = ~torch.isfinite(thresholds)
    if unset.any():
        names = [n for n, u in zip(task.class_names, unset.tolist(), strict=True) if u]
        log.warning("%d classes have no %s threshold, they use 0.5: %s", len(names), how, names)
        thresholds[unset] = DEFAULT_THRESHOLD
    return thresholds


def resolve_thresholds(task: MultiLabelTask, how: str) -> str:
    """``how`` with ``"auto"`` resolved: ``"trained"`` when the task has trained thresholds,
    else ``"0.5"``."""
    if how != "auto":
        return how
    return "trained" if has_trained_thresholds(task) else str(DEFAULT_THRESHOLD)


def has_trained_thresholds(task: MultiLabelTask) -> bool:
    """Whether the task learned per-class thresholds (a mean-teacher task past its first
    epoch)."""
    labeller = getattr(task, "pseudo_labeller", None)
    ready = labeller.ready if labeller is not None else getattr(task, "thresholds_ready", False)
    return hasattr(task, "thresholds") and bool(ready)


@torch.no_grad()
def f1_thresholds(
    task: MultiLabelTask,
    decide_by: str,
    val_source: str,
    preprocessing: Preprocessing,
    batch_size: int,
) -> Tensor:
    """Per-class F1-optimal thresholds of the ``decide_by`` probabilities on ``val_source``."""
    from cssa_lightning.methods.pseudo_labels import fbeta_thresholds

    table = build_record_table(read_source(val_source), task.class_names)
    paths = [Path(row["path"]) for row in table["image"]]
    targets = np.asarray(table.with_format("numpy")["target"], dtype=np.float32)
    targets = torch.as_tensor(targets.reshape(-1, task.num_classes))
    dataset = ImageFiles(paths, preprocessing.transform(), preprocessing.image_size)
    scores = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        bad = [e for e in batch["error"] if e]
        if bad:
            raise ValueError(f"--val_source {val_source}: {bad[0]}")
        probs = task.predict_step({"image": batch["image"], "index": batch["index"]}, 0)
        scores.append(probs[decide_by].float())
    return fbeta_thresholds(torch.cat(scores), targets, 1.0)


def predict(
    ckpt_path: str,
    images: str,
    output: str = "predictions",
    thresholds: str = "auto",
    val_source: str | None = None,
    scores: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    accelerator: str = "auto",
    overwrite: bool = False,
    progress_bar: bool = True,
    precision: str = "32-true",
    devices: int | str = 1,
    num_nodes: int = 1,
) -> PredictionFileWriter:
    """Run ``cssa predict``; returns the writer (its ``written`` and ``skipped``; on the first
    process only when several run).

    With ``devices`` above 1 or several ``num_nodes``, Lightning's ``ddp`` starts one process
    per device (or a cluster launcher such as ``torchrun`` / ``srun`` started them); each labels
    its share of the images and the first merges the files (see :class:`PredictionFileWriter`).
    """
    out = Path(output).expanduser()
    first = is_first_process()
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()] if first else []
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists: pass --overwrite or another --output")
    if batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {batch_size}")
    if num_nodes < 1:
        raise ValueError(f"--num_nodes must be positive, got {num_nodes}")
    paths = list_images(images)
    task, preprocessing = load_for_prediction(ckpt_path)
    has_teacher = "_teacher" in task.evaluated_scores
    if scores == "teacher" and not has_teacher:
        raise ValueError(f"--scores teacher: {type(task).__name__} has no teacher")
    if scores == "student" and "" not in task.evaluated_scores:
        raise ValueError(f"--scores student: the export {ckpt_path} holds the teacher only")
    decide_by = "probs_teacher" if has_teacher and scores != "student" else "probs"
    thresholds = resolve_thresholds(task, thresholds)
    chosen = choose_thresholds(task, thresholds, decide_by, val_source, preprocessing, batch_size)
    for path in existing:
        path.unlink()
    writer = PredictionFileWriter(out, paths, task.class_names, chosen, decide_by)
    dataset = ImageFiles(paths, preprocessing.transform(), preprocessing.image_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    several = num_nodes > 1 or devices not in (1, "1")
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if several else "auto",
        precision=precision,
        logger=False,
        callbacks=[writer],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.predict(task, dataloaders=loader, return_predictions=False)
    if trainer.global_rank != 0:
        return writer  # the first process merged the files and reports
    if not writer.written:
        raise ValueError(
            f"no image of --images {images} could be read ({len(writer.skipped)} skipped, "
            f"listed in {out / 'skipped.csv'})"
        )
    processes = f", {writer.world_size} processes" if writer.world_size > 1 else ""
    print(
        f"{writer.written} images labeled -> {out / 'predictions.csv'}, "
        f"{out / 'predictions.jsonl'} (labels from the "
        f"{'teacher' if decide_by == 'probs_teacher' else 'student'}, thresholds: {thresholds}"
        f"{processes})"
    )
    if writer.skipped:
        print(f"{len(writer.skipped)} unreadable images skipped -> {out / 'skipped.csv'}")
    return writer


def is_first_process() -> bool:
    """Whether this is the first of the processes a launcher (Lightning's ddp, torchrun, srun)
    started, or the only one: only it checks for, and removes, existing output files."""
    return all(
        os.environ.get(name, "0") == "0"
        for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )


def main(args: Sequence[str] | None = None) -> None:
    """``cssa predict`` with command-line ``args``."""
    options = parse_options("predict", args)
    quiet_inference()  # no product tips, hardware lines or weight-loading bar
    predict(
        options.ckpt_path,
        options.images,
        options.output,
        options.thresholds,
        options.val_source,
        options.scores,
        options.batch_size,
        options.num_workers,
        options.accelerator,
        options.overwrite,
        not options.no_progress_bar,
        options.precision,
        options.devices,
        options.num_nodes,
    )
