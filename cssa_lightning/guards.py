"""Guards that keep a failing run from passing as a good one.

:class:`NonFiniteGuard` is added to every ``MultiLabelTask`` fit by the task itself (through
``configure_callbacks``), so no config has to list it:

- a non-finite training loss (NaN or inf) stops the run with one line naming the step and the
  logged ``train/loss_*`` terms that are not finite (``on_non_finite="stop"``), or, with
  ``on_non_finite="skip"``, drops that step's gradients so the weights are not updated, counts
  the step (``train/skipped_steps``) and warns;
- a checkpoint whose parameters (student or teacher) are not finite is never written, so a good
  checkpoint on disk is never replaced by a broken one.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Stop (or skip the step) on a non-finite loss; refuse to save non-finite weights.

    Args:
        mode: ``"stop"`` raises ``FloatingPointError`` at the first non-finite loss, before its
            backward pass; ``"skip"`` drops the step's gradients (the optimizer then leaves
            every parameter unchanged), counts it and goes on.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop"):
        if mode not in ("stop", "skip"):
            raise ValueError(f"mode must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped_steps = 0
        self._drop_gradients = False

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
        if bool(torch.isfinite(loss.detach()).all()):
            return
        terms = self.non_finite_terms(trainer)
        named = ", ".join(f"{k} = {v}" for k, v in terms.items()) or "no logged term is"
        where = (
            f"step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        if self.mode == "stop":
            raise FloatingPointError(
                f"non-finite training loss {float(loss.detach().float().sum())} at {where}: "
                f"{named}; the weights were not updated and no checkpoint was written for this "
                "step (lower the learning rate, or set model.init_args.on_non_finite=skip)"
            )
        self._drop_gradients = True
        self.skipped_steps += 1
        log.warning(
            "skipped %s: non-finite loss (%s); %d skipped so far",
            where,
            named,
            self.skipped_steps,
        )

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._drop_gradients:
            # Parameters without a gradient are left alone by the optimizer (weight decay too).
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

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
