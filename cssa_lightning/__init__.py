"""cssa-lightning: semi-supervised multi-label image classification with CLIP.

The public classes load lazily, so that light entry points (``python -m
cssa_lightning.data.convert``, ``cssa --help``) do not import torch, Lightning and transformers.
"""

from __future__ import annotations

from cssa_lightning import _moved
from cssa_lightning._lazy import lazy_attributes

__all__ = [
    "CLIPBackbone",
    "CSSATask",
    "D2LTask",
    "ExportedClassifier",
    "MeanTeacherTask",
    "MultiLabelDataModule",
    "MultiLabelTask",
    "load_exported",
    "push_to_hub",
]
__version__ = "0.3.0"

# The flat module paths of 0.1.0 (cssa_lightning.cssa, cssa_lightning.callbacks, ...) import
# as deprecated aliases of the folders' modules.
_moved.install()

__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        "CLIPBackbone": "cssa_lightning.networks.clip",
        "CSSATask": "cssa_lightning.methods.cssa",
        "D2LTask": "cssa_lightning.methods.d2l",
        "ExportedClassifier": "cssa_lightning.commands.export",
        "MeanTeacherTask": "cssa_lightning.methods.mean_teacher",
        "MultiLabelDataModule": "cssa_lightning.data.datamodule",
        "MultiLabelTask": "cssa_lightning.methods.multilabel",
        "load_exported": "cssa_lightning.commands.export",
        "push_to_hub": "cssa_lightning.commands.export",
    },
)
