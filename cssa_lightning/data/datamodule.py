"""Two-stream data module: a labeled stream and an unlabeled (weak, strong) stream.

Data flows one way: source -> record table (:mod:`cssa_lightning.data.records`) -> seeded
labeled/unlabeled split -> torch datasets with eval/weak/strong transforms -> loaders.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NotRequired, TypedDict

import albumentations as A
import datasets
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from transformers import AutoImageProcessor

from cssa_lightning.data.prepare import prepare_images, with_prepared_images
from cssa_lightning.data.records import (
    build_record_table,
    check_class_names,
    check_seed,
    load_image,
    read_source,
    resolve_class_names,
    split_labeled,
)
from cssa_lightning.data.resume import EpochSampler, StreamSampler
from cssa_lightning.data.stream import ListStreamSampler, StreamedImages, count_images
from cssa_lightning.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    SeededViews,
    StrongBorder,
    StrongOpName,
    StrongOps,
    check_strong_options,
    eval_transform,
    strong_transform,
    weak_transform,
)
from cssa_lightning.networks.clip import resolve_checkpoint, unloadable_checkpoint_message

log = logging.getLogger(__name__)


class LabeledBatch(TypedDict):
    image: Tensor  # (B, 3, H, W) float
    target: Tensor  # (B, C) float multi-hot
    index: Tensor  # (B,) position in the split


class UnlabeledBatch(TypedDict):
    image_weak: Tensor
    image_strong: Tensor
    # Hidden labels: for monitoring only, never for a loss; absent from a streamed pool.
    target: NotRequired[Tensor]
    # Position in the unlabeled split (a streamed pool: line of the list), to keep per-image
    # teacher scores.
    index: Tensor


class LabeledImages(SeededViews, Dataset):
    """Records of ``table`` at ``indices`` with one transform: ``{"image", "target", "index"}``.

    An item is asked for by position ``i``, or by ``(i, seed)`` (what
    :class:`~cssa_lightning.data.resume.StreamSampler` yields): the transforms are then reseeded with
    ``seed`` first, so the augmentation of an item depends on the seed alone, not on the loader
    worker or process that draws it.
    """

    def __init__(self, table: datasets.Dataset, indices: np.ndarray, transform: A.Compose):
        self.table = table
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def _transforms(self) -> list[A.Compose]:
        return [self.transform]

    def _record(self, key: int | tuple[int, int]) -> tuple[int, np.ndarray, Tensor]:
        if isinstance(key, tuple | list):
            i, seed = int(key[0]), int(key[1])
            self._reseed(seed)
        else:
            i = int(key)
        row = self.table[int(self.indices[i])]
        return i, load_image(row["image"]), torch.tensor(row["target"], dtype=torch.float32)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        i, image, target = self._record(key)
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

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        i, image, target = self._record(key)
        return {
            "image_weak": self.transform(image=image)["image"],
            "image_strong": self.strong(image=image)["image"],
            "target": target,
            "index": i,
        }


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`StreamSampler`, marked resumable for Lightning.

    Its position is not kept here but in ``MultiLabelDataModule.state_dict`` (the trained
    batches of the epoch, known exactly from the trainer, where a loader's own count would
    include batches that were prefetched but not trained on), so its own state is empty.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


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
        strong_num_ops: Random ops of the strong view on top of the weak ops and cutout:
            distinct ops drawn per image out of the ``strong_ops`` pool (at most its size).
        strong_ops: The strong view's pool of ops. ``"full"``: RandAugment-like (colour
            jitter with hue, Posterize, Solarize, Equalize, AutoContrast, Sharpen, rotate,
            shear, translate, blur). ``"colour_preserving"``: without the ops that change hue
            or colour identity, and with brightness/contrast jitter only; for data whose
            classes differ by colour alone (an apple and an orange of the same shape), where
            the full pool can turn an image into one of another class than the weak view's
            pseudo-label names.
        strong_magnitude: Scales every strong op's range (rotation 30 degrees, shear
            15 degrees, translation, colour-jitter strengths, blur sigma, sharpen, Posterize,
            Solarize), in [0, 2]; 1 is the historical strength, 0 makes every op with a
            magnitude the identity. Lower it when strong ops distort or move small objects
            out of the image.
        strong_translate: Largest shift of the strong view's translate op as a fraction of
            the image side (times ``strong_magnitude``), in [0, 1]; settable apart from the
            other ops because a shift is what pushes an object near the border out of view.
        strong_op_names: Only these ops of the ``strong_ops`` pool (``None``: all of them),
            e.g. ``[rotate]`` with ``strong_num_ops: 1`` to measure what one op costs.
        strong_border: What rotate, shear and translate fill the uncovered area with: black
            (``constant``) or the mirrored image (``reflect``: no black corner that clean
            images never show).
        cutout_max: Largest side of a strong-view cutout hole as a fraction of the image side
            (holes are 1/3 of this to this); lower it when objects are small, so that a hole
            rarely erases an object that the weak view's pseudo-label still names.
        labeled_view: The view of labeled images: weak, or strong (as CAP's code does).
        num_workers: Loader worker processes per stream.
        load_unlabeled: Load the unlabeled stream. ``False`` (for labeled-only baselines)
            yields labeled batches only, but keeps the epoch length of the unlabeled stream so
            that every method gets the same number of steps.
        unlabeled_source: An unlabeled pool streamed from an image list (a text file, one
            image path per line, relative to its folder), read lazily and never held in
            memory (:mod:`cssa_lightning.data.stream`): for pools larger than a record
            table. Every ``train_source`` image is then labeled (``labeled_ratio`` must be 1),
            an epoch is one pass over the list, and a mean-teacher task needs
            ``pseudo.memory`` (thresholds from the latest scores, not one row per image).
        unlabeled_shuffle_buffer: Paths held to shuffle the streamed list each epoch (1: the
            list's order).
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
        strong_ops: StrongOps = "full",
        strong_magnitude: float = 1.0,
        strong_translate: float = 0.15,
        strong_op_names: list[StrongOpName] | None = None,
        strong_border: StrongBorder = "constant",
        cutout_max: float = 0.3,
        labeled_view: Literal["weak", "strong"] = "weak",
        num_workers: int = 0,
        load_unlabeled: bool = True,
        image_cache: str | None = None,
        image_cache_size: int = 256,
        unlabeled_source: str | None = None,
        unlabeled_shuffle_buffer: int = 10_000,
    ):
        super().__init__()
        if not 0.0 < labeled_ratio <= 1.0:
            raise ValueError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
        if unlabeled_source is not None and labeled_ratio != 1.0:
            raise ValueError(
                f"data.unlabeled_source streams the unlabeled images, so every train_source "
                f"image is labeled: set data.labeled_ratio to 1.0 (got {labeled_ratio})"
            )
        if unlabeled_shuffle_buffer < 1:
            raise ValueError(
                f"unlabeled_shuffle_buffer must be at least 1, got {unlabeled_shuffle_buffer}"
            )
        for name, size in [
            ("labeled_batch_size", labeled_batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size),
            ("eval_batch_size", eval_batch_size),
            ("image_size", image_size),
        ]:
            if size <= 0:
                raise ValueError(f"{name} must be positive, got {size}")
        if image_cache is not None and image_cache_size < image_size:
            raise ValueError(
                f"image_cache_size ({image_cache_size}) must be at least image_size ({image_size})"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and val_source:
            raise ValueError("give either val_source or val_fraction, not both")
        if not 0.0 < cutout_max <= 1.0:
            raise ValueError(f"cutout_max must be in (0, 1], got {cutout_max}")
        check_strong_options(
            strong_ops, strong_num_ops, strong_magnitude, strong_translate, strong_op_names
        )
        check_seed(split_seed, "split_seed")
        # The resolved class names are logged with the model's hyperparameters (the CLI links
        # them there); logging the unresolved value here too would conflict with them.
        self.save_hyperparameters(ignore=["class_names"])
        # Kept as attributes: subclasses fill them in, so they need not be in the hparams.
        self.train_source, self.val_source, self.test_source = train_source, val_source, test_source
        # Class names are needed before setup(): the CLI links them into the model.
        self._train_records = read_source(train_source)
        self.class_names = (
            check_class_names(class_names, "data.class_names")
            if class_names is not None
            else resolve_class_names(train_source, self._train_records)
        )
        self.mean, self.std = _normalisation(clip_processor)
        self.train_table: datasets.Dataset | None = None
        self._shuffle_seed: int | None = None
        self._resume_point = (0, 0)  # (epoch, batches already trained on) of a resumed run
        self.val_table: datasets.Dataset | None = None
        self.labeled_indices = self.unlabeled_indices = np.zeros(0, dtype=np.int64)
        self.val_indices = np.zeros(0, dtype=np.int64)  # held out of train_table
        self.unlabeled_source = unlabeled_source
        self._streamed_count: int | None = None  # images of the list, counted at setup

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streams_unlabeled(self) -> bool:
        """Whether the unlabeled images come from a streamed list (``unlabeled_source``)."""
        return self.unlabeled_source is not None

    @property
    def num_unlabeled(self) -> int:
        """Unlabeled images: of the split, or of the streamed list."""
        if self.streams_unlabeled:
            if self._streamed_count is None:
                self._streamed_count = count_images(self.unlabeled_source)
            return self._streamed_count
        return len(self.unlabeled_indices)

    def prepare_data(self) -> None:
        # Lightning calls this once per machine before setup: fill the image cache there.
        hp = self.hparams
        if hp.image_cache:
            for source in dict.fromkeys([self.train_source, self.val_source, self.test_source]):
                if source:
                    paths = [str(r.path) for r in read_source(source)]
                    prepare_images(paths, hp.image_cache, hp.image_cache_size, num_proc=None)

    def _cached(self, table: datasets.Dataset) -> datasets.Dataset:
        hp = self.hparams
        if not hp.image_cache:
            return table
        return with_prepared_images(table, hp.image_cache, hp.image_cache_size)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_table is None:
            self.train_table = self._cached(
                build_record_table(self._train_records, self.class_names)
            )
            self.val_indices, train_indices = hold_out_validation(
                len(self.train_table), hp.get("val_fraction", 0.0), hp.get("val_seed", 0)
            )
            labeled, unlabeled = split_labeled(len(train_indices), hp.labeled_ratio, hp.split_seed)
            self.labeled_indices = train_indices[labeled]
            self.unlabeled_indices = train_indices[unlabeled]
            if self.streams_unlabeled:
                log.info(
                    "unlabeled images streamed from %s: %d images",
                    self.unlabeled_source,
                    self.num_unlabeled,
                )
            self._log_split()
        if stage in (None, "fit"):
            self._check_batch_sizes()
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

    def _check_batch_sizes(self) -> None:
        hp = self.hparams
        num_labeled = len(self.labeled_indices)
        if self.num_unlabeled == 0 and num_labeled < hp.labeled_batch_size:
            # Fully labeled: the labeled loader drops its last partial batch, so none is left.
            raise ValueError(
                f"data.labeled_batch_size={hp.labeled_batch_size} is larger than the "
                f"{num_labeled} labeled images: no full batch, no training step; lower it"
            )
        if num_labeled < hp.labeled_batch_size:
            log.warning(
                "labeled_batch_size=%d is larger than the %d labeled images: "
                "each labeled batch repeats images",
                hp.labeled_batch_size,
                num_labeled,
            )

    def _eval_table(self, source: str | None) -> datasets.Dataset | None:
        if not source:
            return None
        return self._cached(build_record_table(read_source(source), self.class_names))

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
            strong_transform(
                hp.image_size,
                self.mean,
                self.std,
                hp.strong_num_ops,
                hp.cutout_max,
                ops=hp.strong_ops,
                magnitude=hp.strong_magnitude,
                translate=hp.strong_translate,
                only=hp.get("strong_op_names"),
                border=hp.get("strong_border", "constant"),
            ),
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
        seed = self.shuffle_seed()
        rank, world = self._process()
        _, weak, strong = self._transforms()
        labeled_view = strong if hp.labeled_view == "strong" else weak
        labeled = LabeledImages(self.train_table, self.labeled_indices, labeled_view)
        if self.num_unlabeled == 0:
            # The last partial (global) batch is dropped.
            steps = len(labeled) // (hp.labeled_batch_size * world)
            loader = self._table_loader(labeled, hp.labeled_batch_size, steps, 0)
            return CombinedLoader({"labeled": loader}, mode="max_size_cycle")
        _, weak, strong = self._transforms()  # the labeled stream's transforms are its own
        # The unlabeled stream defines the epoch: its full batches, or one partial batch when
        # it holds less than one. The labeled stream draws as many batches, cycling (and
        # reshuffling) through the labeled split as often as needed.
        num_unlabeled = self.num_unlabeled
        global_unlabeled = hp.unlabeled_batch_size * world
        steps = max(num_unlabeled // global_unlabeled, 1)
        unlabeled_batch = min(hp.unlabeled_batch_size, num_unlabeled // world)
        if unlabeled_batch == 0:
            raise ValueError(
                f"{num_unlabeled} unlabeled images cannot be shared by {world} processes"
            )
        loaders = {"labeled": self._table_loader(labeled, hp.labeled_batch_size, steps, 0)}
        if hp.load_unlabeled and self.streams_unlabeled:
            sampler = ListStreamSampler(
                self.unlabeled_source,
                steps * unlabeled_batch * world,
                seed,
                1,
                rank,
                world,
                hp.unlabeled_shuffle_buffer,
            )
            images = StreamedImages(self.unlabeled_source, num_unlabeled, weak, strong)
            loaders["unlabeled"] = self._stream_loader(images, unlabeled_batch, sampler)
        elif hp.load_unlabeled:
            unlabeled = UnlabeledImages(self.train_table, self.unlabeled_indices, weak, strong)
            loaders["unlabeled"] = self._table_loader(unlabeled, unlabeled_batch, steps, 1)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _table_loader(
        self, dataset: Dataset, batch_size: int, steps: int, stream: int
    ) -> DataLoader:
        """``steps`` batches of ``batch_size`` per process of a record-table dataset in a
        resumable, seeded order (:class:`StreamSampler`)."""
        rank, world = self._process()
        sampler = StreamSampler(
            len(dataset), steps * batch_size * world, self.shuffle_seed(), stream, rank, world
        )
        return self._stream_loader(dataset, batch_size, sampler)

    def _stream_loader(
        self, dataset: Dataset, batch_size: int, sampler: EpochSampler
    ) -> DataLoader:
        """Batches of ``batch_size`` in ``sampler``'s order, from where a resumed run stopped."""
        epoch, batches = self._resume_point
        sampler.set_epoch(epoch)
        sampler.skip = batches * batch_size  # only for the resumed epoch: see set_epoch
        sampler.resume_epoch = epoch
        workers = self.hparams.num_workers
        return ResumableLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: worker seeds are not drawn from the global one, so iterating
            # a loader (or resuming) does not shift the global random stream.
            generator=torch.Generator().manual_seed(sampler.seed + sampler.stream),
        )

    def _process(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def shuffle_seed(self) -> int:
        """Seed of the training order and augmentations: the global torch seed (set by
        ``seed_everything``) when training starts, the same on every process, and the saved
        one when a checkpoint is resumed."""
        if self._shuffle_seed is None:
            seed = torch.initial_seed() % 2**63
            if self.trainer is not None:
                seed = int(self.trainer.strategy.broadcast(seed, src=0))
            self._shuffle_seed = seed
        return self._shuffle_seed

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the data stream exactly: the shuffle seed and
        how many batches of the current epoch were trained on."""
        state: dict[str, Any] = {"shuffle_seed": self._shuffle_seed}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            state["epoch"] = trainer.current_epoch
            state["batches"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("shuffle_seed") is not None:
            self._shuffle_seed = int(state_dict["shuffle_seed"])
        if "epoch" in state_dict:
            self._resume_point = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def labeled_eval_dataloader(self) -> DataLoader:
        """The labeled split with the eval transform, in order (for calibration and priors)."""
        eval_, _, _ = self._transforms()
        dataset = LabeledImages(self.train_table, self.labeled_indices, eval_)
        return self._loader(dataset, self.hparams.eval_batch_size)

    def unlabeled_eval_dataloader(self) -> DataLoader:
        """The unlabeled split with the eval transform, in order; ``index`` is the position in
        the unlabeled stream (for a fixed teacher's pass over every unlabeled image)."""
        if self.streams_unlabeled:
            raise ValueError(
                "a pass over every unlabeled image needs a record table: not with "
                "data.unlabeled_source (a streamed list)"
            )
        eval_, _, _ = self._transforms()
        dataset = LabeledImages(self.train_table, self.unlabeled_indices, eval_)
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
    try:
        processor = AutoImageProcessor.from_pretrained(resolve_checkpoint(checkpoint))
    except OSError as error:
        raise OSError(unloadable_checkpoint_message(checkpoint, error)) from error
    return tuple(processor.image_mean), tuple(processor.image_std)
