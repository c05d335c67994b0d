"""The module paths of 0.1.0, before the package had folders, as deprecated aliases.

Run folders, configs and notebooks written before name ``cssa_lightning.cssa.CSSATask`` or
``cssa_lightning.callbacks.RunReport``. For one release those paths still import: the old
name is the new module itself (the same classes, so checkpoints and ``isinstance`` agree),
with a :class:`DeprecationWarning` that names the new path. 0.4.0 drops them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# Old module -> new module.
MOVED_MODULES = {
    "cssa_lightning.records": "cssa_lightning.data.records",
    "cssa_lightning.transforms": "cssa_lightning.data.transforms",
    "cssa_lightning.prepare": "cssa_lightning.data.prepare",
    "cssa_lightning.datamodule": "cssa_lightning.data.datamodule",
    "cssa_lightning.convert": "cssa_lightning.data.convert",
    "cssa_lightning.resume": "cssa_lightning.data.resume",
    "cssa_lightning.clip": "cssa_lightning.networks.clip",
    "cssa_lightning.heads": "cssa_lightning.networks.heads",
    "cssa_lightning.network": "cssa_lightning.networks.network",
    "cssa_lightning.losses": "cssa_lightning.methods.losses",
    "cssa_lightning.pseudo_labels": "cssa_lightning.methods.pseudo_labels",
    "cssa_lightning.contexts": "cssa_lightning.methods.contexts",
    "cssa_lightning.metrics": "cssa_lightning.methods.metrics",
    "cssa_lightning.loss_terms": "cssa_lightning.methods.loss_terms",
    "cssa_lightning.monitoring": "cssa_lightning.methods.monitoring",
    "cssa_lightning.multilabel": "cssa_lightning.methods.multilabel",
    "cssa_lightning.mean_teacher": "cssa_lightning.methods.mean_teacher",
    "cssa_lightning.cssa": "cssa_lightning.methods.cssa",
    "cssa_lightning.d2l": "cssa_lightning.methods.d2l",
    "cssa_lightning.callbacks": "cssa_lightning.reporting.callbacks",
    "cssa_lightning.report": "cssa_lightning.reporting.report",
    "cssa_lightning.run_files": "cssa_lightning.reporting.run_files",
    "cssa_lightning.cli": "cssa_lightning.commands.cli",
    "cssa_lightning.command_parsers": "cssa_lightning.commands.parsers",
    "cssa_lightning.predict": "cssa_lightning.commands.predict",
    "cssa_lightning.export": "cssa_lightning.commands.export",
    "cssa_lightning.trained": "cssa_lightning.commands.trained",
    "cssa_lightning.packaged": "cssa_lightning.commands.packaged",
}
# ``cssa_lightning.commands`` (the old entry point) is now the folder; its ``main`` is in
# ``cssa_lightning.commands.entry``.


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old module name as the already imported new module."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; the old path goes in 0.4.0",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new_name)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the module's __spec__ to the alias's; the module
        # stays what it is under its own name.
        module.__spec__ = self._spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names of :data:`MOVED_MODULES` (installed by the package)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib's
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
