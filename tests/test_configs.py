"""Every shipped config parses against the current code (typos and stale options fail here)."""

from pathlib import Path

import pytest

from cssa_lightning.cli import build_cli

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, capsys):
    subcommand = "test" if config.name.startswith("zeroshot") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        build_cli([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: cssa_lightning." in capsys.readouterr().out
