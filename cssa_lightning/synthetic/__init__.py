"""The synthetic benchmark world (demo data) and the tiny CLIP pre-trained on it.

Core modules never import this package. Its attributes load lazily, so importing it (or
locating its packaged assets with ``importlib.resources``) stays cheap:

* :class:`WorldDataModule` (:mod:`.datamodule`): the embedded default data module;
* :data:`CLASS_NAMES` (:mod:`.shapes`) and :func:`ensure_world` (:mod:`.world`);
* :data:`TINY_CLIP`: the directory of the shipped tiny CLIP pre-trained on world v2 (also
  reachable anywhere a checkpoint is accepted by its short name ``"tiny-clip"``), and
  :data:`TINY_CLIP_V3` and :data:`TINY_CLIP_V4`, the same model pre-trained on worlds v3 and
  v4 (``"tiny-clip-v3"``, ``"tiny-clip-v4"``).
"""

from __future__ import annotations

from pathlib import Path

from cssa_lightning._lazy import lazy_attributes

__all__ = [
    "CLASS_NAMES",
    "TINY_CLIP",
    "TINY_CLIP_V3",
    "TINY_CLIP_V4",
    "WorldDataModule",
    "ensure_world",
]

#: Directory of the shipped tiny CLIP checkpoint (pre-trained on world v2).
TINY_CLIP = str(Path(__file__).parent / "assets" / "tiny-clip")
#: Directory of the tiny CLIP pre-trained on world v3.
TINY_CLIP_V3 = str(Path(__file__).parent / "assets" / "tiny-clip-v3")
#: Directory of the tiny CLIP pre-trained on world v4 (half of the classes never named).
TINY_CLIP_V4 = str(Path(__file__).parent / "assets" / "tiny-clip-v4")

__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        "WorldDataModule": "cssa_lightning.synthetic.datamodule",
        "CLASS_NAMES": "cssa_lightning.synthetic.shapes",
        "ensure_world": "cssa_lightning.synthetic.world",
    },
)
