"""A trained checkpoint with what inference needs: the task and its eval preprocessing.

Shared by ``cssa predict`` (:mod:`cssa_lightning.commands.predict`) and ``cssa export``
(:mod:`cssa_lightning.commands.export`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import albumentations as A
import torch

from cssa_lightning.data.transforms import eval_transform
from cssa_lightning.guards import first_line, unreadable_checkpoint
from cssa_lightning.methods.multilabel import MultiLabelTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """The eval transform of a trained model: bicubic resize to a square, then normalise."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self) -> A.Compose:
        return eval_transform(self.image_size, self.mean, self.std)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, stored: dict) -> Preprocessing:
        """The inverse of :meth:`to_dict` (a checkpoint's or an export's ``preprocessing``)."""
        return cls(int(stored["image_size"]), tuple(stored["mean"]), tuple(stored["std"]))


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``path`` names: a ``.ckpt`` file, or a run folder (any folder a fit
    wrote checkpoints under), whose best checkpoint is taken.

    In a run folder, the best checkpoint is the one its ``ModelCheckpoint`` recorded as best
    (in the newest checkpoint's callback state); without a monitored metric, ``last.ckpt``;
    else the only checkpoint there is.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the folder holds no checkpoint.
        ValueError: The folder holds several checkpoints and none is marked best or last.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    found = sorted(path.rglob("*.ckpt"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise FileNotFoundError(f"{path} is a folder with no checkpoint (*.ckpt) under it")
    best = _recorded_best(found[-1])
    last = [p for p in found if p.name == "last.ckpt"]
    if best is not None and best.is_file():
        chosen, why = best, "the best"
    elif len(last) == 1:
        chosen, why = last[0], "the last"
    elif len(found) == 1:
        chosen, why = found[0], "the only"
    else:
        chosen = None
    if chosen is not None:
        log.info("run folder %s: %s checkpoint, %s", path, why, chosen)
        return chosen
    names = ", ".join(str(p.relative_to(path)) for p in found[:4])
    raise ValueError(
        f"{path} holds {len(found)} checkpoints and none is recorded as best or last "
        f"({names}{', ...' if len(found) > 4 else ''}): pass one of them"
    )


def _recorded_best(checkpoint: Path) -> Path | None:
    """The best checkpoint a ``ModelCheckpoint`` recorded in ``checkpoint``'s callback state."""
    try:
        # Memory-mapped: only the callback state is read, not the weights.
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded
        return None
    callbacks = stored.get("callbacks", {}) if isinstance(stored, dict) else {}
    for key, state in callbacks.items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
            best = state.get("best_model_path")
            if best and state.get("monitor"):
                best = Path(best)
                # A run folder that was moved: the recorded file by name, beside this one.
                return best if best.is_file() else checkpoint.parent / best.name
    return None


def load_trained(checkpoint: str | Path) -> tuple[MultiLabelTask, Preprocessing]:
    """Load a training checkpoint (any ``MultiLabelTask`` subclass) on the CPU, in eval mode.

    Args:
        checkpoint: A ``.ckpt`` file, or a run folder: its best checkpoint
            (:func:`find_checkpoint`).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: It is not a checkpoint of this package's tasks.
    """
    path = find_checkpoint(checkpoint)
    try:
        # weights_only: a checkpoint from anywhere cannot run code on load. The package's
        # checkpoints hold only tensors and plain Python values (hyperparameters as dicts,
        # lists, strings and numbers), which the weights-only unpickler accepts.
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the unpickler raises many types on bad bytes
        raise unreadable_checkpoint(path, error) from error
    if not isinstance(stored, dict) or "state_dict" not in stored:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    task_class = _task_class(stored, path)
    try:
        task = task_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - damaged weights or options: one line, chained
        raise ValueError(
            f"checkpoint {path} cannot be loaded into {task_class.__name__}: {first_line(error)} "
            "(damaged, or written by another version of the model)"
        ) from error
    task.eval()
    return task, _preprocessing(stored, task)


def _task_class(stored: dict, path: Path) -> type[MultiLabelTask]:
    name = stored.get("task_class")
    if name is None:  # checkpoints written before the class was stored
        has_teacher = any(key.startswith("teacher.") for key in stored["state_dict"])
        name = (
            "cssa_lightning.methods.cssa.CSSATask"
            if has_teacher
            else ("cssa_lightning.methods.multilabel.MultiLabelTask")
        )
    module, _, attribute = name.rpartition(".")
    try:
        # Checkpoints written before the package had folders name the flat modules
        # (``cssa_lightning.cssa.CSSATask``): they import as aliases (cssa_lightning._moved).
        task_class = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{path}: task class {name} cannot be imported ({error})") from error
    if not (isinstance(task_class, type) and issubclass(task_class, MultiLabelTask)):
        raise ValueError(f"{path}: {name} is not a MultiLabelTask")
    return task_class


def _preprocessing(stored: dict, task: MultiLabelTask) -> Preprocessing:
    if "preprocessing" in stored:
        return Preprocessing.from_dict(stored["preprocessing"])
    # Older checkpoints: the data module's hyperparameters, else the CLIP's own processor.
    from cssa_lightning.data.datamodule import _normalisation

    data = stored.get("datamodule_hyper_parameters") or {}
    clip = task.net.clip
    image_size = int(data.get("image_size") or clip.image_size)
    mean, std = _normalisation(data.get("clip_processor") or task.hparams.clip_checkpoint)
    return Preprocessing(image_size, tuple(mean), tuple(std))
