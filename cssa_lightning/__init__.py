"""cssa-lightning: semi-supervised multi-label image classification with CLIP.

The public classes load lazily, so that light entry points (``python -m
cssa_lightning.convert``, ``cssa --help``) do not import torch, Lightning and transformers.
"""

from __future__ import annotations

from cssa_lightning._lazy import lazy_attributes

__all__ = [
    "CLIPBackbone",
    "CSSATask",
    "D2LTask",
    "MeanTeacherTask",
    "MultiLabelDataModule",
    "MultiLabelTask",
]
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        "CLIPBackbone": "cssa_lightning.clip",
        "CSSATask": "cssa_lightning.cssa",
        "D2LTask": "cssa_lightning.d2l",
        "MeanTeacherTask": "cssa_lightning.mean_teacher",
        "MultiLabelDataModule": "cssa_lightning.datamodule",
        "MultiLabelTask": "cssa_lightning.multilabel",
    },
)
