"""Progress bars of the package's long steps (world generation, reading a data source, the
record table, the bias calibration), drawn with Rich like Lightning's own progress bar.

Bars are transient: they disappear when the step ends, and draw nothing where the output is not
a terminal (logs, CI). If another live display is already on screen (Rich allows one at a
time), the step runs without a bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


class ProgressBar:
    """One step's bar: ``with ProgressBar("world train", 6000) as bar: ... bar.update(200)``.

    Args:
        description: What is being done.
        total: Units of work (images, batches); ``None`` when unknown.
        disable: Draw nothing (e.g. on processes other than rank 0).
    """

    def __init__(self, description: str, total: int | None, disable: bool = False):
        self.description, self.total, self.disable = description, total, disable
        self.n = 0
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> ProgressBar:
        if self.disable:
            return self
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
            console=Console(stderr=True),  # stdout stays for results (paths, tables)
        )
        try:
            progress.start()
        except LiveError:  # another live display (e.g. Lightning's bar) is on screen
            return self
        self._progress = progress
        self._task = progress.add_task(self.description, total=self.total)
        return self

    def update(self, n: int = 1) -> None:
        """Mark ``n`` more units done."""
        self.n += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable[T], description: str, total: int | None = None, disable: bool = False
) -> Iterator[T]:
    """Yield ``items`` with a bar (``total`` defaults to ``len(items)`` where there is one);
    the bar counts an item when it is handed out."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(description, total, disable) as bar:
        for item in items:
            bar.update()
            yield item
