"""The ``cssa`` command: a ``LightningCLI`` with ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

import logging
from typing import Literal

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningCLI

# The task modules are imported so that jsonargparse knows every MultiLabelTask subclass by
# its short name too (``--model.help CSSATask``, ``class_path: D2LTask``).
from cssa_lightning import cssa, d2l, mean_teacher  # noqa: F401
from cssa_lightning.datamodule import MultiLabelDataModule
from cssa_lightning.guards import (
    check_output_folders,
    raised_by_torch_load,
    unreadable_checkpoint,
)
from cssa_lightning.multilabel import MultiLabelTask
from cssa_lightning.packaged import resolve_config_args
from cssa_lightning.run_files import RunConfigCallback

log = logging.getLogger(__name__)


class CSSALightningCLI(LightningCLI):
    """Links the data module's class names into the model and the model's CLIP checkpoint into
    the data module's normalisation; optionally tests after ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
        )
        # The images are normalised with the statistics of the CLIP the model loads.
        parser.link_arguments("model.init_args.clip_checkpoint", "data.init_args.clip_processor")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, run the test loop and print the test metrics.",
        )
        parser.add_argument(
            "--test_weights",
            type=Literal["final", "best"],
            default="final",
            help="Weights the after-fit test uses: the final ones, or the checkpoint that the "
            "monitoring ModelCheckpoint kept as best (model selection on the validation split).",
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters first: name a broken file there.
        # (Lightning loads it with weights_only=True.)
        try:
            super()._parse_ckpt_path()
        except Exception as error:
            if not raised_by_torch_load(error):
                raise
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise unreadable_checkpoint(path, error) from error

    def before_fit(self) -> None:
        # Before the config is saved and before any training: RunGuard checks it again for
        # fits started outside the CLI.
        check_output_folders(self.trainer)
        config = self.config.get(self.subcommand, {})
        if config.get("test_after_fit", False) and hasattr(self.datamodule, "test_source"):
            if not self.datamodule.test_source:
                # Found now rather than after hours of training.
                raise ValueError(
                    "--test_after_fit true needs test images: set data.init_args.test_source "
                    "(or --test_after_fit false)"
                )

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:
            # A learning-rate monitor has nothing to log to without a logger (and Lightning
            # raises), so a config that has one still runs with --trainer.logger false.
            monitors = [c for c in trainer.callbacks if isinstance(c, LearningRateMonitor)]
            if monitors:
                log.info("no logger: the learning-rate monitor is left out")
                trainer.callbacks = [c for c in trainer.callbacks if c not in monitors]
        return trainer

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, {})
        if config.get("test_after_fit", False):
            best = config.get("test_weights", "final") == "best"
            self.trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path="best" if best else None
            )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``cssa`` console script (see :func:`cssa_lightning.commands.main`)."""
    from cssa_lightning.commands import main as run

    run(args)


def build_cli(args: ArgsType = None, run: bool = True) -> CSSALightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand (unless ``run=False``: then
    only instantiate), return the CLI object. ``--config`` takes a path or a packaged name."""
    if isinstance(args, list | tuple):
        args = resolve_config_args(args)
    return CSSALightningCLI(
        MultiLabelTask,
        MultiLabelDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
