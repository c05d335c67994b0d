import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cssa_lightning.commands.entry import main
from cssa_lightning.methods.multilabel import MultiLabelTask
from cssa_lightning.reporting.callbacks import FitSummary

from .conftest import fit_config


class RecordMetrics(FitSummary):
    """FitSummary that also keeps the trainer and model where the test can reach them."""

    fit_metrics: dict = {}
    trainer = None
    model = None

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        RecordMetrics.fit_metrics = {k: torch.tensor(v) for k, v in self.metrics.items()}
        RecordMetrics.trainer, RecordMetrics.model = trainer, pl_module


def test_fit_supervised_baseline_in_process(tmp_path, image_folders, tiny_clip_dir):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    assert main(["fit", "--config", str(config)]) is None
    trainer, model = RecordMetrics.trainer, RecordMetrics.model
    assert isinstance(model, MultiLabelTask)
    assert model.class_names == ["red", "green", "blue", "yellow", "cyan", "magenta"]
    assert trainer.global_step == 6
    metrics = {**RecordMetrics.fit_metrics, **trainer.callback_metrics}
    for key in (
        "train/loss_sup",
        "val/mAP",
        "val/CF1",
        "val/OF1",
        "test/mAP",
        "test/CF1",
        "test/OF1",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= metrics["test/mAP"] <= 100
    assert bool(model.bias_calibrated)
    # A real offline W&B run was written, with the full config saved beside it.
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run"
    # The checkpoint restores without extra arguments.
    checkpoint = next(Path(trainer.log_dir or tmp_path).rglob("*.ckpt"), None) or next(
        tmp_path.rglob("*.ckpt")
    )
    restored = MultiLabelTask.load_from_checkpoint(checkpoint)
    torch.testing.assert_close(restored.net.alignment.bias, model.net.alignment.bias)


def test_cssa_help_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "cssa_lightning", "fit", "--help"],
        capture_output=True,
        text=True,
        timeout=600,  # a loaded machine can take minutes to import the stack
    )
    assert result.returncode == 0, result.stderr
    assert "--data" in result.stdout and "--model" in result.stdout
    assert "--test_after_fit" in result.stdout


def test_model_help_lists_typed_options():
    result = subprocess.run(
        [sys.executable, "-m", "cssa_lightning", "fit", "--model.help", "MultiLabelTask"],
        capture_output=True,
        text=True,
        timeout=600,  # a loaded machine can take minutes to import the stack
    )
    assert result.returncode == 0, result.stderr
    assert "{asl,bce}" in result.stdout
    assert "Peak learning rate of the heads" in result.stdout


@pytest.mark.parametrize(
    ("name", "shown"), [("CSSATask", "{attention,decoder}"), ("D2LTask", "decoupled_heads")]
)
def test_model_help_knows_every_task_by_its_short_name(name, shown, capsys):
    # As README and the configs write it (a dot import path works too).
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", name])
    assert exit_info.value.code == 0
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["--model.init_args.loss=hinge"])
def test_cli_rejects_bad_choice(tmp_path, image_folders, tiny_clip_dir, bad):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), bad])


@pytest.mark.parametrize("weights", ["final", "best"])
def test_after_fit_test_uses_final_or_best_weights(tmp_path, image_folders, tiny_clip_dir, weights):
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/mAP", "mode": "max", "save_top_k": 1},
    }
    config = fit_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        logger=False,
        callbacks=[{"class_path": "tests.test_cli.RecordMetrics"}, checkpoint],
    )
    main(["fit", "--config", str(config), f"--test_weights={weights}"])
    trainer = RecordMetrics.trainer
    best = trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    # Lightning records which checkpoint the last test loaded (None: the weights in memory).
    assert trainer.ckpt_path == (best if weights == "best" else None)


@pytest.mark.parametrize("command", ["convert", "prepare"])
def test_cssa_runs_the_data_commands(command, capsys):
    from cssa_lightning.commands.entry import main, usage

    assert command in usage()
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cssa {command}" in capsys.readouterr().out


# What `cssa ARGS` imports before it answers: torch, Lightning and transformers take seconds.
_IMPORTS = """
import sys
from cssa_lightning.commands.entry import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in ("torch", "lightning", "transformers") if m in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["predict", "--help"], 0),
        (["export", "--help"], 0),
        (["predict", "--ckpt_path"], 2),  # an argument mistake
        (["export", "--weights", "both", "--ckpt_path", "a", "--output", "b"], 2),
        (["fitt"], 2),  # a mistyped subcommand
        (["convert", "--help"], 0),
    ],
)
def test_help_and_argument_mistakes_import_nothing_heavy(args, code):
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True, check=True
    )
    assert result.stdout.split()[-2:] == [str(code), "-"], result.stdout + result.stderr


def test_version_and_did_you_mean(capsys):
    from cssa_lightning import __version__
    from cssa_lightning.commands.entry import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cssa-lightning {__version__}"
    with pytest.raises(SystemExit) as exit_info:
        main(["exprot", "--ckpt_path", "x"])
    assert exit_info.value.code == 2
    assert "unknown subcommand 'exprot'; did you mean export?" in capsys.readouterr().err
