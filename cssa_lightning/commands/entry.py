"""The ``cssa`` entry point: dispatch to the Lightning CLI or to the package's own commands.

Kept free of heavy imports so that ``cssa --help`` and argument mistakes answer quickly; the
Lightning CLI (:mod:`cssa_lightning.commands.cli`) is imported only when a training subcommand runs.

Every error in the user's data or options that the package raises (``ValueError`` or
``OSError`` with a message naming the file, line or key) reaches the terminal as one line
``error: ...`` and exit status 1, however deeply the argument parser wrapped it. Set
``CSSA_TRACEBACK=1`` to see the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cssa_lightning.commands.packaged import packaged_configs, resolve_config_args

PACKAGE_DIR = Path(__file__).resolve().parents[1]

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train a model (and, with --test_after_fit, test it).",
    "validate": "Evaluate a model on the validation split.",
    "test": "Evaluate a model on the test split.",
}
OWN_SUBCOMMANDS = {
    "predict": "Label a folder or list of images with a trained checkpoint (CSV + JSONL).",
    "export": "Write a trained checkpoint as a self-contained directory and ONNX.",
    "report": "Write a run's figures and report.md from its run folder.",
    "convert": "Write COCO, VOC or NUS-WIDE annotations as image folders (metadata.jsonl).",
    "prepare": "Decode and resize image folders once into the image cache (data.image_cache).",
}
# Own subcommand -> the module whose ``main(argv)`` runs it (imported only when it runs).
OWN_MODULES = {
    "predict": "cssa_lightning.commands.predict",
    "export": "cssa_lightning.commands.export",
    "report": "cssa_lightning.reporting.report",
    "convert": "cssa_lightning.data.convert",
    "prepare": "cssa_lightning.data.prepare",
}
# Own subcommands whose module imports torch: their arguments are parsed first with the light
# parser of :mod:`cssa_lightning.commands.parsers`, so --help and mistakes answer at once.
LIGHT_PARSERS = ("predict", "export")


def usage() -> str:
    """The top-level help of ``cssa``."""
    lines = [
        "usage: cssa [-h] {" + ",".join([*LIGHTNING_SUBCOMMANDS, *OWN_SUBCOMMANDS]) + "} ...",
        "",
        "Semi-supervised multi-label image classification with CLIP (CSSA, CAP, baselines).",
        "",
        "subcommands (each has its own --help):",
    ]
    for name, text in {**LIGHTNING_SUBCOMMANDS, **OWN_SUBCOMMANDS}.items():
        lines.append(f"  {name:<10}{text}")
    lines += [
        "",
        "configs shipped with the package, usable by name (cssa fit --config demo): "
        + ", ".join(packaged_configs()),
    ]
    return "\n".join(lines)


def main(args: Sequence[str] | dict[str, Any] | None = None) -> None:
    """Entry point of the ``cssa`` console script and ``python -m cssa_lightning``."""
    if isinstance(args, dict):  # a config as a dict: straight to the Lightning CLI
        return _run(lambda: _lightning(args))
    argv = list(sys.argv[1:] if args is None else args)
    if argv in ([], ["-h"], ["--help"]):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv in (["-V"], ["--version"]):
        from cssa_lightning import __version__

        print(f"cssa-lightning {__version__}")
        raise SystemExit(0)
    check_subcommand(argv[0])
    argv = resolve_config_args(argv)
    if argv[0] in OWN_MODULES:
        if argv[0] in LIGHT_PARSERS:
            from cssa_lightning.commands import parsers

            parsers.parse_options(argv[0], argv[1:])
        module = importlib.import_module(OWN_MODULES[argv[0]])
        return _run(lambda: module.main(argv[1:]))
    if args is None:
        # LightningCLI warns when given args while sys.argv has some: hand it sys.argv.
        sys.argv[1:] = argv
        return _run(lambda: _lightning(None))
    return _run(lambda: _lightning(argv))


def check_subcommand(name: str) -> None:
    """Exit with status 2 and the closest subcommands when ``name`` is none (before anything
    heavy is imported); options (``--...``) go on to the Lightning CLI."""
    subcommands = [*LIGHTNING_SUBCOMMANDS, *OWN_SUBCOMMANDS]
    if name.startswith("-") or name in subcommands:
        return
    import difflib

    close = difflib.get_close_matches(name, subcommands, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    print(
        f"cssa: error: unknown subcommand {name!r}{hint} (one of {', '.join(subcommands)}; "
        "cssa --help)",
        file=sys.stderr,
    )
    raise SystemExit(2)


def _lightning(args: Any) -> None:
    from cssa_lightning.commands.cli import build_cli
    from cssa_lightning.reporting.run_files import configure_logging, finish_run

    configure_logging()
    cli = build_cli(args)
    finish_run(cli.trainer)


def _run(command) -> None:
    # Lightning's pytree helper calls an API that torch 2.13 deprecates, up to three times a
    # run: nothing a user of this package can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        command()
    except Exception as error:  # noqa: BLE001 - reported as one line when it is the user's
        message = user_error(error)
        if message is None or os.environ.get("CSSA_TRACEBACK"):
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


# What the package raises for problems in the user's data, options, files or run.
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)


def user_error(error: BaseException) -> str | None:
    """The one-line message of a user error inside ``error``'s chain, else ``None``.

    A user error is a ``ValueError``, ``OSError``, ``ImportError`` (an install hint) or
    ``FloatingPointError`` (the NaN guard's stop, naming the loss term and step) raised by
    this package's own code (the parser wraps such errors in its own ``ValueError``s; loader
    workers re-raise them with the original traceback as text). The outermost one is reported:
    when the package catches an error and raises its own with the file and the fix (a
    ``UnicodeDecodeError`` becoming "FILE:LINE: not valid UTF-8 ..."), the user reads the
    package's message; the chain stays in the traceback ``CSSA_TRACEBACK=1`` keeps.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for exception in chain:  # outermost first
        if isinstance(exception, USER_ERRORS) and _raised_here(exception.__traceback__):
            return _one_line(str(exception))
        worker = _worker_error(str(exception))
        if worker is not None:
            return worker
    return None


def _raised_here(traceback: TracebackType | None) -> bool:
    last = None
    while traceback is not None:
        last = traceback
        traceback = traceback.tb_next
    if last is None:
        return False
    return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def _worker_error(message: str) -> str | None:
    # torch re-raises a loader worker's exception as "Caught X in DataLoader worker process N.
    # Original Traceback (most recent call last): ... X: message".
    if "Original Traceback" not in message or "cssa_lightning" not in message:
        return None
    last = message.strip().splitlines()[-1]
    for name in ("ValueError", "FileNotFoundError", "OSError", "PermissionError"):
        if last.startswith(name + ": "):
            return _one_line(last[len(name) + 2 :])
    return None


def _one_line(message: str) -> str:
    return " ".join(message.split())
