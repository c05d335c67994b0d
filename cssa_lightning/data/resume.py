"""Exact resume: the data order, the augmentations and the global random generators.

A run killed at any step and resumed with ``--ckpt_path last`` repeats the uninterrupted run
when three things come back exactly:

- **the data order**: :class:`StreamSampler` draws each epoch's order from
  ``(seed, stream, epoch)`` alone, so the order of an epoch is known without replaying it, and
  a resumed epoch skips the batches its checkpoint had already trained on
  (``MultiLabelDataModule.state_dict`` records them);
- **the augmentations**: each item of an epoch carries its own augmentation seed, a function of
  ``(seed, stream, epoch, position in the epoch)``; the dataset reseeds its transforms with it.
  Neither the loader worker that draws an item, nor the number of workers, nor the process in
  a multi-process run changes what an image looks like;
- **the global generators** (torch, CUDA, numpy, Python ``random``): :class:`GlobalRandomState`
  saves them in every checkpoint and puts them back when training restarts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """What the package's samplers share: ``num_samples`` items per epoch over all processes,
    this process's share, the epoch, and the items of a resumed epoch to skip.

    It subclasses ``DistributedSampler`` only so that Lightning does not replace it in
    multi-process runs: a subclass splits the data between processes itself, process ``rank``
    taking every ``world_size``-th position of one global order, so batch ``i`` of all
    processes together holds exactly batch ``i`` of a one-process run with ``world_size``
    times the batch size.

    Args:
        num_samples: Items per epoch over all processes (a multiple of ``world_size``).
        seed: Base seed of the run.
        stream: Distinguishes the streams of one run (labeled, unlabeled).
        rank: This process.
        world_size: Number of processes.
    """

    def __init__(self, num_samples: int, seed: int, stream: int, rank: int, world_size: int):
        if num_samples <= 0 or num_samples % world_size:
            raise ValueError(
                f"{type(self).__name__}: {num_samples} samples cannot be split evenly between "
                f"{world_size} processes"
            )
        self.total_size, self.num_samples = num_samples, num_samples // world_size
        self.seed, self.stream = int(seed), int(stream)
        self.rank, self.num_replicas = rank, world_size
        self.epoch = 0
        # Items of this process's share of epoch ``resume_epoch`` already trained on before
        # the run was resumed: skipped in that epoch only.
        self.skip, self.resume_epoch = 0, 0
        self.shuffle, self.drop_last = True, False  # DistributedSampler's attributes

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skipped(self, epoch: int) -> int:
        """Items of this process's share of ``epoch`` to skip (a resumed epoch's)."""
        return self.skip if epoch == self.resume_epoch else 0


class StreamSampler(EpochSampler):
    """A reproducible, resumable random order over ``num_items`` items.

    Each epoch draws ``num_samples`` items (whole permutations, concatenated as long as needed:
    a short labeled split cycles within the epoch) from a generator seeded with
    ``(seed, stream, epoch)``, and yields ``(item, augmentation_seed)`` pairs; processes share
    it as :class:`EpochSampler` says.

    Args:
        num_items: Size of the dataset.
        num_samples, seed, stream, rank, world_size: As :class:`EpochSampler`'s.
    """

    def __init__(
        self,
        num_items: int,
        num_samples: int,
        seed: int,
        stream: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items <= 0:
            raise ValueError(f"StreamSampler: {num_samples} samples of {num_items} items")
        super().__init__(num_samples, seed, stream, rank, world_size)
        self.num_items = num_items

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The global order of ``epoch``: item indices and their augmentation seeds."""
        rng = np.random.default_rng([self.seed, self.stream, epoch])
        repeats = -(-self.total_size // self.num_items)
        order = np.concatenate([rng.permutation(self.num_items) for _ in range(repeats)])
        seeds = rng.integers(0, 2**32, size=self.total_size, dtype=np.uint64)
        return order[: self.total_size], seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.epoch_order(self.epoch)
        skip = self.skipped(self.epoch)
        positions = range(self.rank, self.total_size, self.num_replicas)[skip:]
        return iter([(int(order[p]), int(seeds[p])) for p in positions])


class GlobalRandomState(Callback):
    """Saves the global random generators in checkpoints and restores them on resume.

    They are put back at ``on_train_start``, after everything that runs between restoring a
    checkpoint and the first training step (model set-up, ``on_fit_start``, the sanity check),
    so the next step draws what it drew in the uninterrupted run.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "GlobalRandomState"

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            # As tensors and plain numbers: checkpoints are loaded with weights_only=True.
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
