"""What a run leaves on disk beside its logger: the full config, provenance and a log file.

* :func:`run_directory`: the folder that belongs to one run and no other, beside its
  checkpoints (``<save_dir>/<project>/<run id>`` for W&B, a versioned TensorBoard/CSV folder,
  or a fresh ``runs/<time>`` folder);
* :class:`RunConfigCallback`: the ``SaveConfigCallback`` of the ``cssa`` command. It writes the
  complete parsed config to ``<run dir>/cssa-config.yaml`` (never over an existing file) and
  logs it, with the package version and git commit, as the run's hyper-parameters;
* :func:`configure_logging`: the package's ``INFO`` messages on the console, kept in memory
  until :func:`attach_run_log` writes them (and everything after) to ``<run dir>/cssa.log``.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

CONFIG_FILE = "cssa-config.yaml"
LOG_FILE = "cssa.log"
PACKAGE = "cssa_lightning"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_run_dirs: weakref.WeakKeyDictionary[Trainer, Path] = weakref.WeakKeyDictionary()


def run_directory(trainer: Trainer) -> Path:
    """The folder of this run only, created on first call (call it on global rank 0).

    It is where the run's checkpoints already go (Lightning's ``<save_dir>/<name>/<version>``
    of the first logger), so that one folder holds the run's checkpoints, config, log and
    report:

    - with a :class:`~lightning.pytorch.loggers.WandbLogger`:
      ``<save_dir>/<project>/<run id>``, with a ``wandb`` link to the W&B run's own folder
      (``<save_dir>/wandb/<run>``, what ``wandb sync`` uploads), and a ``latest-run`` link
      beside it naming the newest run;
    - else with a logger that versions its folder (TensorBoard, CSV): its ``log_dir``;
    - else ``<default_root_dir>/runs/<UTC time>`` (suffixed if two runs start in one second).
    """
    if trainer in _run_dirs:
        return _run_dirs[trainer]
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        experiment = logger.experiment  # starts the W&B run: its id is the folder's name
        root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
        folder = root / str(logger.version)
        folder.mkdir(parents=True, exist_ok=True)
        _link(folder / "wandb", Path(experiment.dir).parent)
        _link(root / "latest-run", folder)
    elif logger is not None and getattr(logger, "version", None) is not None and logger.log_dir:
        # The logger's own folder, not ``trainer.log_dir``: that one is a broadcast, a
        # collective that the other ranks (which never call this) would not join.
        folder = Path(logger.log_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = unused_path(Path(trainer.default_root_dir) / "runs" / stamp)
    folder.mkdir(parents=True, exist_ok=True)
    _run_dirs[trainer] = folder
    return folder


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (a relative symbolic link, replaced if it exists); where
    links cannot be made, a text file ``<link>.txt`` holds the target's path."""
    relative = os.path.relpath(target.resolve(), link.parent.resolve())
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(relative, target_is_directory=True)
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        link.with_name(link.name + ".txt").write_text(str(target.resolve()) + "\n")


def unused_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else ``<stem>-1<suffix>``, ``<stem>-2<suffix>``, ..."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def provenance() -> dict[str, Any]:
    """Package version and, for a git checkout of the package, its commit and dirty flag."""
    info: dict[str, Any] = {"version": _package_version()}
    package_dir = Path(__file__).resolve().parents[1]
    try:
        top = _git(package_dir, "rev-parse", "--show-toplevel")
        # Only the package's own repository: a venv inside another repository must not lend
        # that repository's commit to an installed copy.
        if (Path(top) / PACKAGE / "__init__.py").resolve() != package_dir / "__init__.py":
            return info
        info["git_commit"] = _git(package_dir, "rev-parse", "HEAD")
        info["git_dirty"] = bool(_git(package_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _package_version() -> str:
    try:
        return metadata.version("cssa-lightning")
    except metadata.PackageNotFoundError:
        from cssa_lightning import __version__

        return __version__


def _git(folder: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip()


class RunConfigCallback(SaveConfigCallback):
    """Saves the parsed ``cssa`` config with the run and logs it as its hyper-parameters.

    Writes ``cssa-config.yaml`` (the complete config: ``seed_everything``, ``trainer``,
    ``model``, ``data`` and the command's own options, every default filled in; give it back to
    ``cssa fit --config`` to repeat the run) into :func:`run_directory`, never over an existing
    file, and starts the run's log file there (:func:`attach_run_log`). Every logger gets the
    config's sections as hyper-parameters, plus ``cssa_lightning`` (version, git commit, dirty
    flag), so runs can be grouped by seed, epochs or precision. Lightning's own copy in the shared ``trainer.log_dir`` is not written
    (``save_to_log_dir=False``): the next run would overwrite it.
    """

    def __init__(self, parser, config, config_filename: str = CONFIG_FILE, **kwargs: Any):
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, config_filename, **kwargs)
        self.log_file: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # A later stage of the same run (the test after fit) appends to the same log file.
        if trainer.is_global_zero and self.log_file is not None:
            attach_run_log(self.log_file)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            detach_run_log()

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = run_directory(trainer)
        self.log_file = attach_run_log(folder / LOG_FILE)
        path = unused_path(folder / self.config_filename)
        self.parser.save(self.config, str(path), skip_none=False, multifile=self.multifile)
        log.info("run folder %s: config saved as %s", folder, path.name)
        hyperparameters = self.hyperparameters()
        for logger in trainer.loggers:
            logger.log_hyperparams(hyperparameters)

    def hyperparameters(self) -> dict[str, Any]:
        """The config as plain data (``config`` file paths dropped), with provenance."""
        values = yaml.safe_load(self.parser.dump(self.config, skip_none=False)) or {}
        values.pop("config", None)
        values[PACKAGE] = provenance()
        return values


def finish_run(trainer: Trainer) -> None:
    """Close what a ``cssa`` command opened for its run: its W&B runs (so that the offline
    run on disk is complete, and a later in-process command starts a new run rather than
    reusing this one) and its log file."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()
    detach_run_log()


# -- console and log file ----------------------------------------------------------------------
class _Buffer(logging.Handler):
    """Keeps the latest records so the run's log file can start with what came before it."""

    def __init__(self, capacity: int = 10_000):
        super().__init__(logging.DEBUG)
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Console(logging.StreamHandler):
    """The console handler :func:`configure_logging` adds (marked so it is added once).

    Writes to the current ``sys.stderr``, which progress bars and W&B may have replaced.
    """

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing litlogger / litmodels" lines: advertisements
    for other products, printed on every run, that say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


class _NoHardwareLines(logging.Filter):
    """Drops Lightning's "GPU available / TPU available" lines (``cssa predict`` and ``cssa
    export``: they say what the chosen ``--accelerator`` already says)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("GPU available", "TPU available"))


_buffer = _Buffer()
_run_log: logging.FileHandler | None = None
_no_advertisements = _NoAdvertisements()
_no_hardware_lines = _NoHardwareLines()


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's messages of ``level`` and above on stderr and keep them for the run log.

    Called at the start of every ``cssa`` command; a library user configures logging as usual
    instead. Each call starts a new command: what earlier work in this process logged is not
    carried into the next run's log, and a W&B run left open by earlier work is finished so the
    command logs to its own run.
    """
    _buffer.records.clear()
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(min(logger.level or level, level))
    if not any(isinstance(h, _Console) for h in logger.handlers):
        console = _Console()
        console.setLevel(level)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(console)
    if _buffer not in logger.handlers:
        logger.addHandler(_buffer)
    quiet_advertisements()


def quiet_inference() -> None:
    """What ``cssa predict`` and ``cssa export`` print besides their own lines: no product tips,
    no hardware lines, no weight-loading bar of transformers (a checkpoint's CLIP is loaded
    again from its name; the bar says nothing about the images)."""
    from transformers.utils import logging as transformers_logging

    quiet_advertisements()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _no_hardware_lines not in rank_zero.filters:
        rank_zero.addFilter(_no_hardware_lines)
    transformers_logging.disable_progress_bar()


def quiet_advertisements() -> None:
    """Drop Lightning's product tips from its console messages (every ``cssa`` command that
    builds a Trainer: fit and the others, predict)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _no_advertisements not in rank_zero.filters:
        rank_zero.addFilter(_no_advertisements)


def attach_run_log(path: Path) -> Path:
    """Write the package's (and Lightning's) log records to ``path`` from now on.

    The file (appended to, if it exists) starts with the package's records kept since a run log
    was last open (data set reading, world generation, split sizes). One run log is open at a
    time.
    """
    global _run_log
    if _run_log is not None and Path(_run_log.baseFilename) == Path(path).absolute():
        return path
    detach_run_log()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    for record in list(_buffer.records):
        if record.levelno >= handler.level:
            handler.handle(record)
    _buffer.records.clear()
    for name in (PACKAGE, "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    _run_log = handler
    return path


def detach_run_log() -> None:
    """Close the current run log file, if any."""
    global _run_log
    if _run_log is None:
        return
    for name in (PACKAGE, "lightning.pytorch"):
        logging.getLogger(name).removeHandler(_run_log)
    _run_log.close()
    _run_log = None
    _buffer.records.clear()  # kept from now on for the next run log only
