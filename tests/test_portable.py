"""Configs and checkpoints work from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.commands.entry import main
from cssa_lightning.commands.packaged import packaged_configs, resolve_config, resolve_config_args
from cssa_lightning.methods.multilabel import MultiLabelTask

from .conftest import fit_config

REPO_CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture
def empty_cwd(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    yield cwd
    os.chdir(old)


def test_repository_configs_are_the_packaged_ones():
    assert set(packaged_configs()) == {p.stem for p in REPO_CONFIGS.glob("*.yaml")}
    for name, path in packaged_configs().items():
        assert path.read_text() == (REPO_CONFIGS / f"{name}.yaml").read_text()


def test_config_names_resolve(empty_cwd):
    demo = str(packaged_configs()["demo"])
    assert resolve_config("demo") == demo and resolve_config("demo.yaml") == demo
    assert resolve_config("missing") == "missing"
    # An existing file wins over a packaged name.
    (empty_cwd / "demo").write_text("seed_everything: 3\n")
    assert resolve_config("demo") == "demo"
    assert resolve_config_args(["fit", "-c", "coco", "--config=voc2012", "--x", "coco"]) == [
        "fit",
        "-c",
        str(packaged_configs()["coco"]),
        "--config=" + str(packaged_configs()["voc2012"]),
        "--x",
        "coco",
    ]


def test_demo_config_by_name_instantiates_from_an_empty_folder(empty_cwd, tmp_path):
    world = tmp_path / "world"
    cli = build_cli(
        [
            "--config",
            "demo",
            "--trainer.logger=false",
            f"--data.init_args.root={world}",
            "--data.init_args.num_train=40",
            "--data.init_args.num_val=8",
            "--data.init_args.num_test=8",
        ],
        run=False,
    )
    assert cli.model.hparams.clip_checkpoint == "tiny-clip"
    # The data module's normalisation is linked from the model's CLIP checkpoint.
    assert cli.datamodule.hparams.clip_processor == "tiny-clip"
    assert len(cli.model.class_names) == 48
    assert list(empty_cwd.iterdir()) == []


def test_checkpoint_loads_from_another_folder(tmp_path, image_folders, tiny_clip_dir, empty_cwd):
    # Train with the CLIP given as a path relative to the working directory ...
    os.chdir(tiny_clip_dir.parent)
    config = fit_config(
        tmp_path,
        image_folders,
        tiny_clip_dir.name,
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
    )
    main(["fit", "--config", str(config)])
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    # ... and load it from an empty folder: the checkpoint stored an absolute path.
    os.chdir(empty_cwd)
    restored = MultiLabelTask.load_from_checkpoint(checkpoint)
    assert restored.hparams.clip_checkpoint == str(tiny_clip_dir.resolve())
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert stored["task_class"] == "cssa_lightning.methods.multilabel.MultiLabelTask"
    assert stored["preprocessing"]["image_size"] == 32


def test_light_entry_points_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cssa_lightning, cssa_lightning.data.convert\n"
        "from cssa_lightning.commands.entry import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
        "heavy = [m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "export" in result.stdout and "demo" in result.stdout
