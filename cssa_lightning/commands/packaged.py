"""Files shipped inside the package, found by name from any working directory.

The experiment configs live in ``cssa_lightning/configs/`` (the repository's top-level
``configs/`` points there), so ``cssa fit --config demo`` works after any install, from any
folder. Checkpoints shipped with the package are resolved by :func:`cssa_lightning.networks.clip.
resolve_checkpoint` (``"tiny-clip"``).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

CONFIG_SUFFIX = ".yaml"


def config_directory() -> Path:
    """The directory of the packaged configs."""
    return Path(str(importlib.resources.files("cssa_lightning").joinpath("configs")))


def packaged_configs() -> dict[str, Path]:
    """Packaged configs by name (file name without ``.yaml``), sorted."""
    return {path.stem: path for path in sorted(config_directory().glob("*" + CONFIG_SUFFIX))}


def resolve_config(value: str) -> str:
    """Where a ``--config`` value points.

    An existing file (``~`` expanded) is returned as given; otherwise a bare name such as
    ``demo`` or ``demo.yaml`` names a packaged config. Anything else is returned unchanged, so
    the parser reports the missing file or parses the value as inline YAML.
    """
    if Path(value).expanduser().exists():
        return value
    name = value[: -len(CONFIG_SUFFIX)] if value.endswith(CONFIG_SUFFIX) else value
    if name and "/" not in name and "\\" not in name:
        configs = packaged_configs()
        if name in configs:
            return str(configs[name])
    return value


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config NAME`` / ``--config=NAME`` / ``-c NAME`` resolved."""
    resolved: list[str] = []
    take_next = False
    for arg in args:
        if take_next:
            resolved.append(resolve_config(arg))
            take_next = False
        elif arg in ("--config", "-c"):
            resolved.append(arg)
            take_next = True
        elif arg.startswith("--config="):
            resolved.append("--config=" + resolve_config(arg[len("--config=") :]))
        else:
            resolved.append(arg)
    return resolved
