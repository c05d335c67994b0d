"""Package attributes that import their module on first use (PEP 562).

A package's ``__init__`` names its public classes without importing them, so that importing
the package (or a light submodule of it) stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    namespace: dict[str, Any], modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazy attributes.

    Use as ``__getattr__, __dir__ = lazy_attributes(globals(), {"Name": "package.module"})``.

    Args:
        namespace: The package's ``globals()``, with its ``__name__`` and ``__all__``.
        modules: Each lazy attribute's name -> the module that defines it under that name.

    Returns:
        ``__getattr__``, which imports the module of a lazy attribute when it is first looked
        up and raises :class:`AttributeError` for any other name, and ``__dir__``, which
        lists the package's globals and ``__all__``.
    """

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace["__all__"]})

    return __getattr__, __dir__
