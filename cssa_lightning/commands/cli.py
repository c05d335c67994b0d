"""The ``cssa`` command: a ``LightningCLI`` with ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import re
import sys
from typing import Any, Literal, NoReturn

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from cssa_lightning.commands.packaged import resolve_config_args
from cssa_lightning.data.datamodule import MultiLabelDataModule
from cssa_lightning.guards import (
    check_output_folders,
    raised_by_torch_load,
    unreadable_checkpoint,
)

# The task modules are imported so that jsonargparse knows every MultiLabelTask subclass by
# its short name too (``--model.help CSSATask``, ``class_path: D2LTask``).
from cssa_lightning.methods import cssa, d2l, mean_teacher  # noqa: F401
from cssa_lightning.methods.multilabel import MultiLabelTask
from cssa_lightning.methods.options import FLAT_NAMES
from cssa_lightning.reporting.run_files import RunConfigCallback

log = logging.getLogger(__name__)

# jsonargparse's reports of an option that a --model / --data class does not take, and of a
# value that does not fit an option's type.
_NOT_ACCEPTED = re.compile(
    r'Parser key "(?P<key>[\w.]+)":.*?'
    r"class_path '(?P<class_path>[\w.]+)':\s*Option '(?P<option>\w+)' is not accepted",
    re.DOTALL,
)
_BAD_VALUE = re.compile(
    r'Parser key "(?P<key>[\w.]+)":.*?'
    r"class_path '(?P<class_path>[\w.]+)':\s*Parser key \"(?P<option>\w+)\":\s*(?P<problem>[^\n]+)",
    re.DOTALL,
)


def init_options(cls: type) -> list[str]:
    """The options of ``cls.__init__``, its own first, then those its ``**kwargs`` pass on to
    the base classes (as jsonargparse reads them)."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names += [
            p.name
            for p in parameters
            if p.name != "self"
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and p.name not in names
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def option_error_message(message: str, command: str) -> str | None:
    """One line for an option that the model or data class does not take (the option, the
    class, the closest names it does take) or for a value of the wrong type; ``None`` for any
    other parser error."""
    bad_value = _BAD_VALUE.search(message)
    if bad_value is not None:
        name = bad_value["class_path"].rpartition(".")[2]
        return (
            f"--{bad_value['key']}.{bad_value['option']} ({name}): {bad_value['problem'].strip()}"
        )
    match = _NOT_ACCEPTED.search(message)
    if match is None:
        return None
    module, _, name = match["class_path"].rpartition(".")
    try:
        options = init_options(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    key, option = match["key"], match["option"]
    if option in FLAT_NAMES and FLAT_NAMES[option][0] in options:
        group, field = FLAT_NAMES[option]
        return (
            f"--{key}.{option}: {name} has no option {option!r} since 0.3.0; it is "
            f"--{key}.{group}.{field} (in a config: {group}: {{{field}: ...}})"
        )
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.5)
    # Abbreviations too: learning_rate -> lr.
    close += [o for o in options if o == _initials(option) and o not in close]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"--{key}.{option}: {name} has no option {option!r}; {hint}all: {command} --{key}.help {name}"


class CSSAArgumentParser(LightningArgumentParser):
    """Lightning's parser, with one line for a misspelled or unknown model / data option, or a
    value of the wrong type, instead of the union-type report and the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self.exit_on_error:  # not while jsonargparse is only trying an alternative
            parser = getattr(ex, "subcommand_parser", None) or self
            subcommand = parser.prog.rsplit(" ", 1)[-1]  # "<prog> [options] fit"
            line = option_error_message(message, f"cssa {subcommand}")
            if line is not None:
                self._logger.error(message)
                sys.stderr.write(f"error: {line}\n")
                self.exit(2)
        super().error(message, ex)


class CSSALightningCLI(LightningCLI):
    """Links the data module's class names into the model and the model's CLIP checkpoint into
    the data module's normalisation; optionally tests after ``fit``."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = CSSAArgumentParser
        return super().init_parser(**kwargs)

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
        config = self._get(self.config_init, "trainer", default={})
        idle = getattr(self.model, "modules_idle_in_warmup", list)()
        warmup = getattr(self.model, "hparams", {}).get("warmup_epochs", 0)
        if config.get("strategy") == "ddp" and idle and warmup > 0 and "strategy" not in kwargs:
            # Plain DDP fails at the first warm-up step in which these get no gradient.
            log.info(
                "strategy ddp -> ddp_find_unused_parameters_true: %s get no gradient in the "
                "warm-up, which plain ddp rejects",
                ", ".join(idle),
            )
            kwargs["strategy"] = "ddp_find_unused_parameters_true"
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
        # RunConfigCallback logs the whole config (model and data options under their
        # sections): Lightning's own copy of the model's options would repeat them flat.
        trainer_defaults={"enable_autolog_hparams": False},
        args=args,
        run=run,
    )
