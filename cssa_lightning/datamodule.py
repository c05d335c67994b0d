"""Two-stream data module: a labeled stream and an unlabeled (weak, strong) stream.

Data flows one way: source -> record table (:mod:`cssa_lightning.records`) -> seeded
labeled/unlabeled split -> torch datasets with eval/weak/strong transforms -> loaders.
"""

from __future__ import annotations

import logging
from typing import Literal, TypedDict

import albumentations as A
import datasets
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from transformers import AutoImageProcessor

from cssa_lightning.clip import resolve_checkpoint
from cssa_lightning.records import (
    build_record_table,
    load_image,
    read_source,
    resolve_class_names,
    split_labeled,
)
from cssa_lightning.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    eval_transform,
    strong_transform,
    weak_transform,
)

log = logging.getLogger(__name__)


class LabeledBatch(TypedDict):
    image: Tensor  # (B, 3, H, W) float
    target: Tensor  # (B, C) float multi-hot
    index: Tensor  # (B,) position in the split


class UnlabeledBatch(TypedDict):
    image_weak: Tensor
    image_strong: Tensor
    target: Tensor  # hidden labels: for monitoring only, never for a loss
    index: Tensor  # position in the unlabeled split, to keep per-image teacher scores


class LabeledImages(Dataset):
    """Records of ``table`` at ``indices`` with one transform: ``{"image", "target", "index"}``."""

    def __init__(self, table: datasets.Dataset, indices: np.ndarray, transform: A.Compose):
        self.table = table
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self._seeded_from: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _transforms(self) -> list[A.Compose]:
        return [self.transform]

    def _seed_transforms(self) -> None:
        # Albumentations keeps its own generator, which seed_everything does not reach. Seed it
        # from torch's seed of this process (a loader worker gets its own), so runs repeat.
        seed = torch.initial_seed()
        if seed != self._seeded_from:
            for offset, transform in enumerate(self._transforms()):
                transform.set_random_seed((seed + offset) % 2**32)
            self._seeded_from = seed

    def _record(self, i: int) -> tuple[np.ndarray, Tensor]:
        self._seed_transforms()
        row = self.table[int(self.indices[i])]
        return load_image(row["image"]), torch.tensor(row["target"], dtype=torch.float32)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, target = self._record(i)
        return {"image": self.transform(image=image)["image"], "target": target, "index": i}


class UnlabeledImages(LabeledImages):
    """Weak and strong view of each image; its target is kept only for monitoring."""

    def __init__(
        self, table: datasets.Dataset, indices: np.ndarray, weak: A.Compose, strong: A.Compose
    ):
        super().__init__(table, indices, weak)
        self.strong = strong

    def _transforms(self) -> list[A.Compose]:
        return [self.transform, self.strong]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, target = self._record(i)
        return {
            "image_weak": self.transform(image=image)["image"],
            "image_strong": self.strong(image=image)["image"],
            "target": target,
            "index": i,
        }


class MultiLabelDataModule(LightningDataModule):
    """Multi-label images split into a labeled and an unlabeled stream.

    Each training step gets ``{"labeled": LabeledBatch, "unlabeled": UnlabeledBatch}``; the
    unlabeled stream defines the epoch and the labeled one cycles. With ``labeled_ratio=1``
    there is no unlabeled stream and batches hold ``"labeled"`` only.

    Args:
        train_source: Training images: a directory with ``metadata.jsonl`` (``file_name`` and a
            ``labels`` list of class names per line) or a CSV with columns ``path,labels``
            (labels joined by ``|``).
        test_source: Test images, same formats. Never used for validation or model selection.
        val_source: Validation images, same formats.
        val_fraction: Without ``val_source``: the fraction of the training images held out
            (by ``val_seed``) for validation, from both the labeled and the unlabeled stream.
            With neither, nothing is validated (a checkpoint callback cannot monitor ``val/``).
        val_seed: Seed of the validation hold-out; kept apart from ``split_seed`` so that every
            labeled/unlabeled split of a study is validated on the same images.
        class_names: Ordered class names; ``None`` reads ``classes.txt`` beside the training
            source, else takes the sorted union of the training labels.
        labeled_ratio: Fraction ``p`` of training images that keep their labels, in (0, 1].
        split_seed: Seed of the labeled/unlabeled permutation.
        image_size: Side of the square model input.
        clip_processor: Checkpoint (hub id or directory) whose image processor's mean/std
            the transforms use; ``None`` uses OpenAI CLIP's statistics.
        labeled_batch_size: Labeled images per step.
        unlabeled_batch_size: Unlabeled images per step.
        eval_batch_size: Images per validation/test/predict step.
        strong_num_ops: Random ops of the strong view on top of the weak ops and cutout.
        cutout_max: Largest side of a strong-view cutout hole as a fraction of the image side
            (holes are 1/3 of this to this); lower it when objects are small, so that a hole
            rarely erases an object that the weak view's pseudo-label still names.
        labeled_view: The view of labeled images: weak, or strong (as CAP's code does).
        num_workers: Loader worker processes per stream.
        load_unlabeled: Load the unlabeled stream. ``False`` (for labeled-only baselines)
            yields labeled batches only, but keeps the epoch length of the unlabeled stream so
            that every method gets the same number of steps.
    """

    def __init__(
        self,
        train_source: str,
        test_source: str | None = None,
        val_source: str | None = None,
        val_fraction: float = 0.0,
        val_seed: int = 0,
        class_names: list[str] | None = None,
        labeled_ratio: float = 0.1,
        split_seed: int = 1,
        image_size: int = 224,
        clip_processor: str | None = None,
        labeled_batch_size: int = 8,
        unlabeled_batch_size: int = 56,
        eval_batch_size: int = 64,
        strong_num_ops: int = 2,
        cutout_max: float = 0.3,
        labeled_view: Literal["weak", "strong"] = "weak",
        num_workers: int = 0,
        load_unlabeled: bool = True,
    ):
        super().__init__()
        if not 0.0 < labeled_ratio <= 1.0:
            raise ValueError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
        for name, size in [
            ("labeled_batch_size", labeled_batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size),
            ("eval_batch_size", eval_batch_size),
            ("image_size", image_size),
        ]:
            if size <= 0:
                raise ValueError(f"{name} must be positive, got {size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and val_source:
            raise ValueError("give either val_source or val_fraction, not both")
        if not 0.0 < cutout_max <= 1.0:
            raise ValueError(f"cutout_max must be in (0, 1], got {cutout_max}")
        # The resolved class names are logged with the model's hyperparameters (the CLI links
        # them there); logging the unresolved value here too would conflict with them.
        self.save_hyperparameters(ignore=["class_names"])
        # Kept as attributes: subclasses fill them in, so they need not be in the hparams.
        self.train_source, self.val_source, self.test_source = train_source, val_source, test_source
        # Class names are needed before setup(): the CLI links them into the model.
        self._train_records = read_source(train_source)
        self.class_names = list(
            class_names or resolve_class_names(train_source, self._train_records)
        )
        self.mean, self.std = _normalisation(clip_processor)
        self.train_table: datasets.Dataset | None = None
        self.val_table: datasets.Dataset | None = None
        self.labeled_indices = self.unlabeled_indices = np.zeros(0, dtype=np.int64)
        self.val_indices = np.zeros(0, dtype=np.int64)  # held out of train_table

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_table is None:
            self.train_table = build_record_table(self._train_records, self.class_names)
            self.val_indices, train_indices = hold_out_validation(
                len(self.train_table), hp.get("val_fraction", 0.0), hp.get("val_seed", 0)
            )
            labeled, unlabeled = split_labeled(len(train_indices), hp.labeled_ratio, hp.split_seed)
            self.labeled_indices = train_indices[labeled]
            self.unlabeled_indices = train_indices[unlabeled]
            self._log_split()
        if stage in (None, "fit", "validate", "test", "predict"):
            self.test_table = self._eval_table(self.test_source)
            if self.val_source:
                self.val_table = self._eval_table(self.val_source)
            elif len(self.val_indices):
                self.val_table = self.train_table.select(self.val_indices)
            elif stage in (None, "fit", "validate"):
                log.warning(
                    "no validation split: set data.val_source or data.val_fraction "
                    "(the test split is never used for validation)"
                )

    def _eval_table(self, source: str | None) -> datasets.Dataset | None:
        return build_record_table(read_source(source), self.class_names) if source else None

    def _log_split(self) -> None:
        targets = self.labeled_targets()
        priors = targets.mean(0)
        log.info(
            "split (seed %d, ratio %g): %d labeled, %d unlabeled images, %d classes",
            self.hparams.split_seed,
            self.hparams.labeled_ratio,
            len(self.labeled_indices),
            len(self.unlabeled_indices),
            self.num_classes,
        )
        if len(self.val_indices):
            log.info(
                "%d training images held out for validation (seed %d)",
                len(self.val_indices),
                self.hparams.get("val_seed", 0),
            )
        log.info(
            "labeled class priors: %s",
            ", ".join(
                f"{n}={p:.3f}" for n, p in zip(self.class_names, priors.tolist(), strict=True)
            ),
        )
        absent = [n for n, p in zip(self.class_names, priors.tolist(), strict=True) if p == 0]
        if absent:
            log.warning("%d classes have no labeled image: %s", len(absent), absent)

    def labeled_targets(self) -> np.ndarray:
        """Multi-hot targets of the labeled split, ``(n_labeled, C)`` float32."""
        if self.train_table is None:
            self.setup("fit")
        table = self.train_table.select(self.labeled_indices).with_format("numpy")
        return np.asarray(table["target"], dtype=np.float32).reshape(-1, self.num_classes)

    # -- loaders ----------------------------------------------------------------------------
    def _transforms(self) -> tuple[A.Compose, A.Compose, A.Compose]:
        hp = self.hparams
        return (
            eval_transform(hp.image_size, self.mean, self.std),
            weak_transform(hp.image_size, self.mean, self.std),
            strong_transform(hp.image_size, self.mean, self.std, hp.strong_num_ops, hp.cutout_max),
        )

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> CombinedLoader:
        hp = self.hparams
        _, weak, strong = self._transforms()
        labeled_view = strong if hp.labeled_view == "strong" else weak
        labeled = LabeledImages(self.train_table, self.labeled_indices, labeled_view)
        if len(self.unlabeled_indices) == 0:
            loader = self._loader(labeled, hp.labeled_batch_size, shuffle=True, drop_last=True)
            return CombinedLoader({"labeled": loader}, mode="max_size_cycle")
        _, weak, strong = self._transforms()  # the labeled stream's transforms are its own
        unlabeled = UnlabeledImages(self.train_table, self.unlabeled_indices, weak, strong)
        drop = len(unlabeled) >= hp.unlabeled_batch_size
        steps = len(unlabeled) // hp.unlabeled_batch_size if drop else 1
        # The labeled sampler draws exactly one epoch's worth of batches (reshuffling each
        # time it wraps), so the unlabeled stream defines the epoch length.
        sampler = RandomSampler(labeled, num_samples=steps * hp.labeled_batch_size)
        loaders = {"labeled": self._loader(labeled, hp.labeled_batch_size, sampler=sampler)}
        if hp.load_unlabeled:
            loaders["unlabeled"] = self._loader(
                unlabeled, hp.unlabeled_batch_size, shuffle=True, drop_last=drop
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

    def labeled_eval_dataloader(self) -> DataLoader:
        """The labeled split with the eval transform, in order (for calibration and priors)."""
        eval_, _, _ = self._transforms()
        dataset = LabeledImages(self.train_table, self.labeled_indices, eval_)
        return self._loader(dataset, self.hparams.eval_batch_size)

    def _eval_loader(self, table: datasets.Dataset | None, split: str) -> DataLoader:
        if table is None:
            raise ValueError(f"no {split} data: set data.test_source (or data.val_source)")
        eval_, _, _ = self._transforms()
        dataset = LabeledImages(table, np.arange(len(table)), eval_)
        return self._loader(dataset, self.hparams.eval_batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_table is None:
            if self.trainer is not None and self.trainer.state.fn == "validate":
                raise ValueError("no validation data: set data.val_source or data.val_fraction")
            return []
        return self._eval_loader(self.val_table, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_table, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_table, "predict")


def hold_out_validation(
    num_images: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded validation hold-out: ``(val_indices, train_indices)``, disjoint and sorted.

    ``floor(fraction * N)`` images are held out; ``fraction=0`` holds out none and leaves the
    training indices ``0..N-1`` (so the labeled/unlabeled split is the same as without it).

    Raises:
        ValueError: ``fraction`` is outside ``[0, 1)`` or leaves no validation or no training
            image.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return np.zeros(0, dtype=np.int64), np.arange(num_images, dtype=np.int64)
    num_val = int(np.floor(fraction * num_images))
    if num_val == 0 or num_val == num_images:
        raise ValueError(
            f"val_fraction={fraction} of {num_images} training images leaves "
            + ("no validation image" if num_val == 0 else "no training image")
        )
    # A stream of its own, so the hold-out does not correlate with the labeled split.
    permutation = np.random.default_rng([seed, 0x7A1]).permutation(num_images)
    return np.sort(permutation[:num_val]), np.sort(permutation[num_val:])


def _normalisation(checkpoint: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if checkpoint is None:
        return CLIP_MEAN, CLIP_STD
    processor = AutoImageProcessor.from_pretrained(resolve_checkpoint(checkpoint))
    return tuple(processor.image_mean), tuple(processor.image_std)
