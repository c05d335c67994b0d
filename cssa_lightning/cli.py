"""The ``cssa`` command: a ``LightningCLI`` with ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

import sys
from typing import Literal

from lightning.pytorch.cli import ArgsType, LightningCLI

from cssa_lightning.datamodule import MultiLabelDataModule
from cssa_lightning.guards import (
    UNREADABLE_CHECKPOINT,
    check_output_folders,
    unreadable_checkpoint,
)
from cssa_lightning.multilabel import MultiLabelTask
from cssa_lightning.run_files import RunConfigCallback, configure_logging, finish_run


class CSSALightningCLI(LightningCLI):
    """Links the data module's class names into the model; optionally tests after ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
        )
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
        try:
            super()._parse_ckpt_path()
        except UNREADABLE_CHECKPOINT as error:
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

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, {})
        if config.get("test_after_fit", False):
            best = config.get("test_weights", "final") == "best"
            self.trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path="best" if best else None
            )


def main(args: ArgsType = None) -> None:
    """Entry point of the ``cssa`` console script and ``python -m cssa_lightning``.

    ``cssa report RUN_DIR`` writes a run's figures and summary (:mod:`cssa_lightning.report`);
    every other subcommand is the ``LightningCLI``'s.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["report"]:
        from cssa_lightning.report import main as report_main

        report_main(argv[1:])
        return
    configure_logging()
    cli = build_cli(args)
    finish_run(cli.trainer)


def build_cli(args: ArgsType = None) -> CSSALightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand, return the CLI object."""
    return CSSALightningCLI(
        MultiLabelTask,
        MultiLabelDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        args=args,
    )


if __name__ == "__main__":
    main()
