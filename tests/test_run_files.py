"""The run's own files: the full config (never overwritten), provenance and the log file."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import yaml

from cssa_lightning.commands.entry import main
from cssa_lightning.reporting import run_files
from cssa_lightning.reporting.run_files import provenance, unused_path
from tests.conftest import fit_config


def csv_logger(tmp_path: Path) -> dict:
    return {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path), "name": "runs"},
    }


def fit(tmp_path, image_folders, tiny_clip_dir, **trainer):
    trainer.setdefault("callbacks", [])
    config = fit_config(tmp_path, image_folders, tiny_clip_dir, **trainer)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--test_after_fit=false"])


def test_each_run_keeps_its_config_and_logs_it_as_hyperparameters(
    tmp_path, image_folders, tiny_clip_dir
):
    for _ in range(2):
        fit(tmp_path, image_folders, tiny_clip_dir, logger=csv_logger(tmp_path))
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        saved = yaml.safe_load((run / "cssa-config.yaml").read_text())
        assert saved["seed_everything"] == 1
        assert saved["trainer"]["max_epochs"] == 1
        assert saved["model"]["class_path"] == "cssa_lightning.MultiLabelTask"
        assert saved["data"]["init_args"]["labeled_ratio"] == 0.25
        hparams = yaml.safe_load((run / "hparams.yaml").read_text())
        # The whole config, once: no flat copy of the model's options beside it.
        assert hparams["trainer"]["max_epochs"] == 1
        assert hparams["seed_everything"] == 1
        assert hparams["data"]["init_args"]["image_size"] == 32
        assert hparams["model"]["init_args"]["lr"] == 1.0e-3
        assert hparams["cssa_lightning"]["version"]
        assert "lr" not in hparams and "class_names" not in hparams
        # The run log holds the messages from before the run folder existed (the split) and
        # after (the bias calibration).
        text = (run / "cssa.log").read_text()
        assert "24 labeled, 72 unlabeled" in text
        assert "calibrated class biases" in text
        # One line per validation (the fit has one epoch; the sanity check is not logged).
        assert text.count(" validation: model mAP ") == 1
        assert "epoch 0 validation: model mAP " in text and ", CF1 " in text
        # ... and nothing of the other run.
        assert text.count("24 labeled, 72 unlabeled") == 1
        # Lightning's own copy (overwritten by the next run in a shared folder) is not made.
        assert not (run / "config.yaml").exists()


def test_runs_without_logger_get_their_own_folder(tmp_path, image_folders, tiny_clip_dir):
    for _ in range(2):
        fit(tmp_path, image_folders, tiny_clip_dir, logger=False)
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    assert all((run / "cssa-config.yaml").is_file() for run in runs)
    run_files.detach_run_log()


def test_unused_path_never_returns_an_existing_file(tmp_path):
    path = tmp_path / "cssa-config.yaml"
    assert unused_path(path) == path
    path.write_text("a")
    assert unused_path(path) == tmp_path / "cssa-config-1.yaml"
    (tmp_path / "cssa-config-1.yaml").write_text("b")
    assert unused_path(path) == tmp_path / "cssa-config-2.yaml"


def test_provenance_names_the_checkout_commit():
    info = provenance()
    assert info["version"]
    root = Path(run_files.__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert info["git_commit"] == head.stdout.strip()
        assert isinstance(info["git_dirty"], bool)
    else:  # an installed copy without its repository: the version alone
        assert "git_commit" not in info


def test_configure_logging_shows_package_info_once(capsys):
    run_files.configure_logging()
    run_files.configure_logging()
    logging.getLogger("cssa_lightning.test").info("hello from the package")
    assert capsys.readouterr().err.count("hello from the package") == 1
