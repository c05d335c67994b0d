"""cssa-lightning: semi-supervised multi-label image classification with CLIP."""

from cssa_lightning.clip import CLIPBackbone
from cssa_lightning.cssa import CSSATask
from cssa_lightning.datamodule import MultiLabelDataModule
from cssa_lightning.multilabel import MultiLabelTask

__all__ = ["CLIPBackbone", "CSSATask", "MultiLabelDataModule", "MultiLabelTask"]
__version__ = "0.1.0"
