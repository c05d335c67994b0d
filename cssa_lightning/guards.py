"""Guards that keep a failing run from passing as a good one.

:class:`NonFiniteGuard` is added to every ``MultiLabelTask`` fit by the task itself (through
``configure_callbacks``), so no config has to list it:

- a non-finite training loss (NaN or inf) stops the run with one line naming the step and the
  logged ``train/loss_*`` terms that are not finite (``on_non_finite="stop"``), or, with
  ``on_non_finite="skip"``, drops that step's gradients so the weights are not updated, counts
  the step (``train/skipped_steps``) and warns;
- a checkpoint whose parameters (student or teacher) are not finite is never written, so a good
  checkpoint on disk is never replaced by a broken one.

:class:`RunGuard`, added the same way, turns runs that cannot succeed into one clear error
before any training step: a data module whose training loader yields no batch, an image size
smaller than the CLIP patch, a checkpoint folder that cannot be written. It also makes every
local checkpoint write atomic (:class:`AtomicCheckpointIO`: a full disk or a killed process
leaves the previous file intact) and names an unreadable checkpoint in one line.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Stop (or skip the step) on a non-finite loss; refuse to save non-finite weights.

    Args:
        mode: ``"stop"`` raises ``FloatingPointError`` at the first non-finite loss, before the
            optimizer step; ``"skip"`` drops the step's gradients (the optimizer then leaves
            every parameter unchanged), counts it and goes on.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop"):
        if mode not in ("stop", "skip"):
            raise ValueError(f"mode must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped_steps = 0
        self._finite: Tensor | None = None  # whether the losses since the last step were finite
        self._loss: Tensor | None = None

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    @staticmethod
    def non_finite_terms(trainer: Trainer) -> dict[str, float]:
        """The logged ``train/loss*`` values of the current step that are not finite."""
        metrics = trainer.callback_metrics
        terms = {}
        for key, value in metrics.items():
            if not key.startswith("train/loss") or key.endswith("_epoch"):
                continue
            if f"{key}_step" in metrics:  # the step value, not the running epoch mean
                continue
            number = float(value)
            if not math.isfinite(number):
                terms[key.removesuffix("_step")] = number
        return terms

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor):
        # Only noted on the device here; read once, just before the optimizer step, when the
        # backward pass is already queued (reading it now would stall the GPU between the
        # forward and the backward pass). Several accumulated batches: any one non-finite.
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        finite, self._finite = self._finite, None
        if finite is None or bool(finite):
            return
        terms = self.non_finite_terms(trainer)
        named = ", ".join(f"{k} = {v}" for k, v in terms.items()) or "no logged term is"
        where = (
            f"step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        if self.mode == "stop":
            raise FloatingPointError(
                f"non-finite training loss {float(self._loss.float().sum())} at {where}: "
                f"{named}; the weights were not updated and no checkpoint was written for this "
                "step (lower the learning rate, or set model.init_args.on_non_finite=skip)"
            )
        self.skipped_steps += 1
        log.warning(
            "skipped %s: non-finite loss (%s); %d skipped so far",
            where,
            named,
            self.skipped_steps,
        )
        # Parameters without a gradient are left alone by the optimizer (weight decay too).
        optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.mode == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.skipped_steps:
            log.warning("%d training steps were skipped for a non-finite loss", self.skipped_steps)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = first_non_finite_parameter(pl_module)
        if bad is not None:
            raise FloatingPointError(
                f"refusing to save a checkpoint at step {trainer.global_step}: parameter {bad} "
                "is not finite (earlier checkpoints are kept as they were)"
            )


def first_non_finite_parameter(module: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or inf, or ``None``."""
    for name, parameter in module.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            return name
    return None


# torch.load's unpickler raises almost any type on random bytes (an IndexError, a KeyError ...),
# so code that only loads treats every Exception as an unreadable file.
_TORCH_LOAD_FILES = ("serialization.py", "_weights_only_unpickler.py")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, else its type's name: what a one-line
    error that wraps it quotes."""
    return (str(error).strip().splitlines() or [""])[0] or type(error).__name__


def raised_by_torch_load(error: BaseException) -> bool:
    """Whether ``error`` was raised inside ``torch.load`` (its traceback passes through it)."""
    traceback = error.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_filename.endswith(_TORCH_LOAD_FILES) and "torch" in code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


def unreadable_checkpoint(path: str | Path, error: BaseException) -> ValueError:
    """The one-line error for a checkpoint that ``torch.load`` cannot read, or refuses to.

    Checkpoints are loaded with ``weights_only=True``: a pickle that would import anything
    beyond tensors and plain values (and so could run code) is refused, with the name of the
    first such global.
    """
    text = str(error)
    refused = _REFUSED_GLOBAL.search(text) if "Weights only load failed" in text else None
    if refused:  # (random bytes also fail the weights-only load, without naming a global)
        return ValueError(
            f"checkpoint {path} refused: it holds Python objects beyond tensors and plain "
            f"values ({refused.group(1)}), which could run code when loaded; only load "
            "checkpoints that this package wrote"
        )
    return ValueError(
        f"checkpoint {path} cannot be read: {first_line(error)} (truncated, corrupt, or not a "
        "checkpoint)"
    )


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and setting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and whose read errors are one line.

    A checkpoint is written to a temporary file in the destination folder, flushed to disk and
    renamed over the destination: the destination is either the old file or the complete new
    one, never a truncated mix (Lightning's own write stages the file in the system temporary
    folder and copies it over when that is another file system). Remote paths (``s3://`` ...)
    keep Lightning's behaviour.

    Args:
        on_load: Called with every loaded checkpoint before any of it is restored (the
            ``RunGuard`` passes the task's class check, which raises on a mismatch).
    """

    def __init__(self, on_load: Callable[[dict[str, Any]], None] | None = None):
        super().__init__()
        self.on_load = on_load

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in (
            "file",
            ("file", "local"),
        ):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            # mkstemp makes the file 0600: give it the mode any other written file gets.
            os.chmod(temporary, 0o666 & ~current_umask())
            os.replace(temporary, path)
        except BaseException as error:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise OSError(
                    error.errno,
                    f"could not write checkpoint {path} ({error.strerror or error}); "
                    "the file there before, if any, is unchanged",
                ) from error
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only=None):
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        # Never code from a checkpoint: weights-only unless a caller asks otherwise in code.
        weights_only = True if weights_only is None else weights_only
        try:
            checkpoint = super().load_checkpoint(path, map_location, weights_only)
        except Exception as error:  # noqa: BLE001 - the unpickler raises many types
            raise unreadable_checkpoint(path, error) from error
        if self.on_load is not None:
            self.on_load(checkpoint)
        return checkpoint


class RunGuard(Callback):
    """Fail before training when a fit cannot succeed; atomic checkpoint writes (module doc)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO(
                getattr(pl_module, "check_checkpoint_classes", None)
            )
        self.check_image_size(trainer, pl_module)
        if stage == "fit":
            check_output_folders(trainer)

    @staticmethod
    def check_image_size(trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        image_size = getattr(getattr(datamodule, "hparams", {}), "get", lambda _: None)(
            "image_size"
        )
        clip = getattr(getattr(pl_module, "net", None), "clip", None)
        if image_size is None or clip is None:
            return
        patch = int(clip.model.config.vision_config.patch_size)
        if int(image_size) < patch:
            raise ValueError(
                f"data.image_size={image_size} is smaller than the CLIP patch ({patch} px) of "
                f"{pl_module.hparams.get('clip_checkpoint')}: images would hold no patch; use "
                f"image_size >= {patch} (the checkpoint was trained at {clip.image_size})"
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning ends such a fit with an info line and exit status 0.
        if trainer.fit_loop.max_batches == 0 and trainer.limit_train_batches != 0:
            raise ValueError(
                "the training loader yields no batch, so fit would train nothing: check "
                "the training split size against the batch sizes (data.labeled_batch_size, "
                "data.unlabeled_batch_size)"
            )


def check_output_folders(trainer: Trainer) -> None:
    """Probe every folder a fit writes to: ``default_root_dir``, the loggers' ``save_dir`` and
    the checkpoint folders (a ``ModelCheckpoint`` without ``dirpath`` writes under the others).

    Raises:
        PermissionError: From :func:`check_writable`, naming the folder.
    """
    folders = {("output folder", str(trainer.default_root_dir))}
    folders |= {("log folder", str(lg.save_dir)) for lg in trainer.loggers if lg.save_dir}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folders.add(("checkpoint folder", str(callback.dirpath)))
    for what, folder in sorted(folders, key=lambda item: item[1]):
        check_writable(folder, what)


def check_writable(folder: str | Path, what: str) -> None:
    """Check that ``folder`` can be written: a probe file in it, or in its nearest existing
    ancestor when it does not exist yet (nothing is created).

    Raises:
        PermissionError: ``folder`` cannot be created or written, naming it and ``what`` it is.
    """
    if get_filesystem(folder).protocol not in ("file", ("file", "local")):
        return
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise PermissionError(
            f"{what} {folder} cannot be written ({error.strerror or error}): "
            "choose another trainer.default_root_dir or checkpoint dirpath"
        ) from error
