"""cssa-lightning: semi-supervised multi-label image classification with CLIP.

The public classes load lazily, so that light entry points (``python -m
cssa_lightning.convert``, ``cssa --help``) do not import torch, Lightning and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CLIPBackbone", "CSSATask", "MultiLabelDataModule", "MultiLabelTask"]
__version__ = "0.1.0"

_LAZY = {
    "CLIPBackbone": "cssa_lightning.clip",
    "CSSATask": "cssa_lightning.cssa",
    "MultiLabelDataModule": "cssa_lightning.datamodule",
    "MultiLabelTask": "cssa_lightning.multilabel",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
