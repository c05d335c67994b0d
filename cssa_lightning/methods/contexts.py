"""Context identification: co-occurrence -> spectral clustering -> context targets.

Contexts are groups of labels that co-occur, found on the *labeled* split only.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from torch import Tensor


def cooccurrence_affinity(targets: np.ndarray) -> np.ndarray:
    """Symmetric conditional co-occurrence ``W = (P + P^T) / 2`` with ``P(j|i) = A_ij / A_ii``.

    Args:
        targets: ``(n, C)`` 0/1 labeled targets ``Y``; ``A = Y^T Y``.

    Returns:
        ``(C, C)`` affinity with a zero diagonal; rows of classes never seen are zero.
    """
    y = np.asarray(targets, dtype=np.float64)
    counts = y.T @ y
    diagonal = np.diag(counts).copy()
    conditional = np.divide(
        counts, diagonal[:, None], out=np.zeros_like(counts), where=diagonal[:, None] > 0
    )
    affinity = (conditional + conditional.T) / 2
    np.fill_diagonal(affinity, 0.0)
    return affinity


def cluster_contexts(affinity: np.ndarray, num_contexts: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of the class affinity into ``num_contexts`` contexts.

    A small constant is added to the affinity so that classes that never co-occur with any
    other (or were never seen) still form a connected graph.

    Returns:
        ``(C,)`` int array: the context of each class.
    """
    num_classes = affinity.shape[0]
    if not 1 <= num_contexts <= num_classes:
        raise ValueError(f"num_contexts must be in [1, {num_classes}], got {num_contexts}")
    if num_contexts == 1:
        return np.zeros(num_classes, dtype=np.int64)
    clustering = SpectralClustering(
        n_clusters=num_contexts,
        affinity="precomputed",
        assign_labels="cluster_qr",
        random_state=seed,
    )
    return clustering.fit_predict(affinity + 1e-6).astype(np.int64)


def context_targets(
    targets: Tensor, class_to_context: Tensor, num_contexts: int, single_label: bool = False
) -> Tensor:
    """Context targets of a batch.

    Multi-hot: ``c_m = max_{k: context(k) = m} y_k``. Single-label: the context holding most of
    the image's labels (lowest index on ties); ``-100`` (ignored by cross-entropy) for an image
    with no label.

    Args:
        targets: ``(B, C)`` 0/1 labels (ground truth or pseudo-labels).
        class_to_context: ``(C,)`` context index of each class.
        num_contexts: ``K``.
        single_label: Return class indices for cross-entropy instead of multi-hot.
    """
    index = class_to_context.to(targets.device).long().unsqueeze(0).expand_as(targets)
    mass = torch.zeros(targets.shape[0], num_contexts, device=targets.device, dtype=targets.dtype)
    mass.scatter_add_(1, index, targets)
    if single_label:
        return torch.where(
            mass.sum(1) > 0, mass.argmax(1), torch.full_like(mass[:, 0], -100).long()
        )
    return (mass > 0).to(targets.dtype)
