"""Buffers whose size comes from the data (the unlabeled pool, the labeled images)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def adopt_stored_shapes(
    module: nn.Module, state_dict: Mapping[str, Any], prefix: str, names: Iterable[str]
) -> None:
    """Give the buffers ``names`` of ``module`` the shapes stored in ``state_dict`` (under
    ``prefix``), so that loading a checkpoint fills them instead of failing on a size that a
    fresh module cannot know. Call it from ``_load_from_state_dict`` before the base class."""
    for name in names:
        stored = state_dict.get(prefix + name)
        current = getattr(module, name)
        if stored is not None and stored.shape != current.shape:
            setattr(module, name, torch.empty_like(stored, device=current.device))
