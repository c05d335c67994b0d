"""Label votes of the nearest labeled images in a frozen image space (``pseudo.prior_source``).

The EMA teacher's errors are the student's own (it is the student's average), so pseudo-labels
made from it confirm them. The zero-shot prior's errors are not, but it knows only what
pre-training named. The labeled images, seen through the frozen start network's global image
feature, know every class: an image's vote for class ``k`` is the similarity-weighted share of
its ``neighbours`` nearest labeled images that carry ``k`` (a kNN classifier; label propagation
in one step). Nothing in it trains, so its errors do not follow the student's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cssa_lightning.methods.buffers import adopt_stored_shapes


class NeighbourVote(nn.Module):
    """The labeled images' features and labels, and the votes of the nearest ones.

    Args:
        num_classes: Classes of the labels.
        neighbours: How many nearest labeled images vote (fewer when fewer are stored).
        temperature: Softmax temperature over the voters' cosine similarities: small, the
            nearest decide; large, every voter counts the same.
    """

    def __init__(self, num_classes: int, neighbours: int = 50, temperature: float = 0.2):
        super().__init__()
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        if temperature <= 0:
            raise ValueError(f"the neighbours' temperature must be > 0, got {temperature}")
        self.neighbours = neighbours
        self.temperature = temperature
        # Filled by fit() (sizes from the data), saved in checkpoints.
        self.register_buffer("features", torch.zeros(0, 0))
        self.register_buffer("targets", torch.zeros(0, num_classes))

    @property
    def fitted(self) -> bool:
        return self.features.shape[0] > 0

    def fit(self, features: Tensor, targets: Tensor) -> None:
        """Store the ``(N, D)`` features (L2-normalised) and ``(N, C)`` labels of the voters."""
        if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
            raise ValueError(
                f"neighbour votes need as many labels as features, at least one: got "
                f"{features.shape[0]} features and {targets.shape[0]} label rows"
            )
        device = self.targets.device
        self.features = F.normalize(features.detach().float(), dim=-1).to(device)
        self.targets = targets.detach().float().to(device)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C)`` votes in ``[0, 1]`` of the images with ``(B, D)`` features."""
        if not self.fitted:
            raise RuntimeError("the neighbour votes have no labeled image yet (call fit)")
        similarity = F.normalize(features.float(), dim=-1) @ self.features.T
        return self._vote(similarity, self.features.shape[0])

    def leave_one_out(self) -> Tensor:
        """``(N, C)`` votes of each stored image by the others: an honest estimate of how well
        the votes rank the labels of images they have not stored."""
        similarity = self.features @ self.features.T
        similarity.fill_diagonal_(float("-inf"))
        return self._vote(similarity, self.features.shape[0] - 1)

    def _vote(self, similarity: Tensor, voters: int) -> Tensor:
        top, index = similarity.topk(max(1, min(self.neighbours, voters)), dim=1)
        weights = torch.softmax(top / self.temperature, dim=1)
        return torch.einsum("bk,bkc->bc", weights, self.targets[index])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The stored voters' number and width come from the data.
        adopt_stored_shapes(self, state_dict, prefix, ("features", "targets"))
        super()._load_from_state_dict(state_dict, prefix, *args)
