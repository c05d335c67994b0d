"""The package's folders are its architecture: imports run one way, and 0.1.0's flat module paths
still import (deprecated)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cssa_lightning
from cssa_lightning._moved import MOVED_MODULES

PACKAGE = Path(cssa_lightning.__file__).parent
# Each folder may import only the folders after it (and the top-level helpers); the
# synthetic demo may import anything, nothing imports it.
LAYERS = ["commands", "reporting", "methods", "data", "networks"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cssa_lightning" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in [*LAYERS, "synthetic"] else "top"


def _imports(path: Path) -> set[str]:
    """Every cssa_lightning module ``path`` imports, at any depth of the file (lazy imports
    inside functions count: they are circles all the same)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("cssa_lightning.")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_run_one_way_through_the_folders():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer(_module_name(path))
        if source in (None, "synthetic", "top"):
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target is None or target == source:
                continue
            if target == "synthetic" or (
                target in LAYERS and LAYERS.index(target) < LAYERS.index(source)
            ):
                wrong.append(f"{_module_name(path)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_top_level_helpers_import_no_folder():
    for name in ["guards", "progress", "_lazy", "_moved"]:
        imported = {_layer(module) for module in _imports(PACKAGE / f"{name}.py")}
        assert imported <= {"top"}, (name, imported)


def test_every_moved_module_exists_and_its_old_path_is_the_same_module():
    for old, new in MOVED_MODULES.items():
        assert not (PACKAGE.parent / (old.replace(".", "/") + ".py")).exists(), old
        module = importlib.import_module(new)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sys.modules.pop(old, None)
            alias = importlib.import_module(old)
        assert alias is module, old
        assert module.__spec__.name == new  # the alias leaves the module its own identity
        assert any(
            issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught
        ), old


def test_old_module_paths_of_a_saved_run_config_still_parse(tmp_path):
    # A config.yaml written by 0.1.0 names its classes by the flat modules.
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: cssa_lightning.callbacks.FitSummary\n"
        "model:\n  class_path: cssa_lightning.cssa.CSSATask\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "cssa_lightning", "fit", "--config", "demo"]
        + ["--config", str(config), "--print_config"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: cssa_lightning.cssa.CSSATask" in result.stdout


@pytest.mark.parametrize("name", ["CSSATask", "MeanTeacherTask", "MultiLabelTask"])
def test_the_package_exports_each_task_from_its_folder(name):
    assert getattr(cssa_lightning, name).__module__.startswith("cssa_lightning.methods.")
