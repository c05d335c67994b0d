"""An unlabeled pool streamed from an image list: never listed in memory, whatever its size.

``data.unlabeled_source`` names a text file with one image path per line (relative paths are
relative to the file's folder; blank lines and lines starting with ``#`` are skipped): millions
of web images cost a file, not a record table. The list is read line by line:

- :func:`count_images` reads it once to size the epoch (one pass over the pool);
- :class:`ListStreamSampler` reads it again each epoch, shuffles it through a bounded buffer
  seeded by ``(seed, stream, epoch)``, and yields this process's share as
  ``(line, path, augmentation_seed)`` keys: process ``rank`` takes every ``world_size``-th
  position, as :class:`~cssa_lightning.data.resume.StreamSampler` does, so batch ``i`` of all
  processes together is batch ``i`` of one process with the whole batch. Loader workers get
  whole batches from the loader, so no two workers, and no two processes, read the same item;
- a resumed epoch skips the keys of the batches already trained on (read, not decoded), so
  the stream position comes back exactly;
- :class:`StreamedImages` decodes the image of a key into its weak and strong views.

Memory: the shuffle buffer's paths and the loader's prefetched batches, independent of the
pool's size (``benchmarks/stream_memory.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from cssa_lightning.data.records import load_image
from cssa_lightning.data.resume import EpochSampler
from cssa_lightning.data.transforms import SeededViews

StreamKey = tuple[int, str, int]  # (line number, image path, augmentation seed)


def read_image_list(source: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, image path)`` of each image of a list file, lazily, in file order.

    Raises:
        FileNotFoundError: The list does not exist.
        ValueError: A line is not valid UTF-8 (naming the file and line).
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"unlabeled image list {source} does not exist")
    folder = source.parent
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(
                    f"{source}:{number}: not valid UTF-8; save the file as UTF-8"
                ) from None
            if line and not line.startswith("#"):
                yield number, str(folder / line)


def count_images(source: str | Path) -> int:
    """How many images a list file names (read once, in constant memory).

    Raises:
        ValueError: It names no image.
    """
    count = sum(1 for _ in read_image_list(source))
    if count == 0:
        raise ValueError(f"unlabeled image list {source} names no image (one path per line)")
    return count


def buffer_shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """``items`` in a random order drawn through a buffer of ``size`` (1: file order): each item
    leaves the buffer when a random draw picks its slot, so memory is ``size`` items."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):
        yield buffer[int(slot)]


class ListStreamSampler(EpochSampler):
    """This process's share of an epoch of a streamed image list, as :class:`StreamKey` keys.

    Each epoch is ``num_samples`` positions of the list, shuffled through a buffer; the list is
    read again from its start if it holds fewer (a small pool cycles within the epoch).
    Processes share it as :class:`~cssa_lightning.data.resume.EpochSampler` says.

    Args:
        source: The image list.
        num_samples, seed, stream, rank, world_size: As ``EpochSampler``'s.
        shuffle_buffer: Paths held to shuffle the stream (1: the file's order).
    """

    def __init__(
        self,
        source: str | Path,
        num_samples: int,
        seed: int,
        stream: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 10_000,
    ):
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        super().__init__(num_samples, seed, stream, rank, world_size)
        self.source = Path(source)
        self.shuffle_buffer = shuffle_buffer

    def _passes(self, rng: np.random.Generator) -> Iterator[tuple[int, str]]:
        # Each pass shuffled on its own: no image comes twice before every image came once.
        while True:
            yield from buffer_shuffled(read_image_list(self.source), self.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[StreamKey]:
        epoch = self.epoch
        order = self._passes(np.random.default_rng([self.seed, self.stream, epoch]))
        # The global position of this process's first key.
        first = self.rank + self.skipped(epoch) * self.num_replicas
        for position, (line, path) in enumerate(order):
            if position >= self.total_size:
                return
            if position < first or (position - self.rank) % self.num_replicas:
                continue
            # The augmentation seed depends on the position alone: not on the process, the
            # loader worker or a resume.
            seed = np.random.SeedSequence([self.seed, self.stream, epoch, position])
            yield line, path, int(seed.generate_state(1)[0])


class StreamedImages(SeededViews, Dataset):
    """The weak and strong views of a streamed image, asked for by a :class:`StreamKey`.

    Items hold ``image_weak``, ``image_strong`` and ``index`` (the image's line in the list);
    no ``target``: a streamed pool has no hidden labels to monitor pseudo-labels with.
    """

    def __init__(self, source: str | Path, num_items: int, weak: A.Compose, strong: A.Compose):
        self.source, self.num_items = Path(source), num_items
        self.weak, self.strong = weak, strong

    def __len__(self) -> int:
        return self.num_items

    def _transforms(self) -> list[A.Compose]:
        return [self.weak, self.strong]

    def __getitem__(self, key: StreamKey) -> dict[str, Tensor | int]:
        line, path, seed = key
        self._reseed(int(seed))
        try:
            image = load_image({"path": path})
        except (OSError, ValueError) as problem:
            raise ValueError(f"{self.source}:{line}: {problem}") from None
        return {
            "image_weak": self.weak(image=image)["image"],
            "image_strong": self.strong(image=image)["image"],
            "index": int(line),
        }
