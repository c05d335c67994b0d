"""Pseudo-label thresholds as pure functions over score tensors.

- CAT (class-distribution-aware thresholds, CAP, NeurIPS 2023): per class, the score at rank
  ``prior_k * n`` among the unlabeled scores, so the pseudo-positive rate equals the prior.
- fixed: one threshold for every class (FixMatch-style).
- F-beta on labeled data (MAT, D2L, ECCV 2024): per class, the threshold that maximises F-beta
  of the teacher's scores on labeled images.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cat_thresholds(scores: Tensor, priors: Tensor) -> Tensor:
    """Per-class thresholds so that ``round(prior_k * n)`` scores of class ``k`` reach them.

    Args:
        scores: ``(n, C)`` teacher probabilities on unlabeled images.
        priors: ``(C,)`` labeled class priors in [0, 1].

    Returns:
        ``(C,)`` thresholds; ``inf`` for a class with a zero prior (never pseudo-positive).
    """
    if scores.dim() != 2 or scores.shape[1] != priors.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)} do not match priors {tuple(priors.shape)}")
    n = scores.shape[0]
    if n == 0:
        raise ValueError("cat_thresholds needs at least one unlabeled score")
    ranked = scores.float().sort(dim=0, descending=True).values
    counts = torch.round(priors.float().to(scores.device) * n).long().clamp(0, n)
    thresholds = ranked.gather(0, (counts - 1).clamp(min=0).unsqueeze(0)).squeeze(0)
    return torch.where(counts > 0, thresholds, torch.full_like(thresholds, float("inf")))


def fixed_thresholds(num_classes: int, value: float, device: torch.device | None = None) -> Tensor:
    """The same threshold for every class."""
    return torch.full((num_classes,), float(value), device=device)


def fbeta_thresholds(scores: Tensor, targets: Tensor, beta: float = 1.0) -> Tensor:
    """Per-class threshold maximising F-beta of ``scores >= threshold`` against ``targets``.

    Candidate thresholds are the observed scores; a class with no positive gets ``inf``.

    Args:
        scores: ``(n, C)`` teacher probabilities on labeled images.
        targets: ``(n, C)`` 0/1 ground truth.
        beta: Weight of recall relative to precision.
    """
    scores, targets = scores.float(), targets.float()
    order = scores.argsort(dim=0, descending=True)
    ranked = scores.gather(0, order)
    hits = targets.gather(0, order)
    true_pos = hits.cumsum(0)
    predicted = torch.arange(1, len(scores) + 1, device=scores.device).unsqueeze(1).float()
    positives = targets.sum(0, keepdim=True)
    precision = true_pos / predicted
    recall = true_pos / positives.clamp(min=1)
    b2 = beta**2
    fbeta = (1 + b2) * precision * recall / (b2 * precision + recall).clamp(min=1e-12)
    # A cut is only valid after the last copy of a tied score.
    valid = torch.ones_like(ranked, dtype=torch.bool)
    valid[:-1] = ranked[:-1] != ranked[1:]
    best = torch.where(valid, fbeta, torch.full_like(fbeta, -1.0)).argmax(0)
    thresholds = ranked.gather(0, best.unsqueeze(0)).squeeze(0)
    return torch.where(
        positives.squeeze(0) > 0, thresholds, torch.full_like(thresholds, float("inf"))
    )


def pseudo_labels(probs: Tensor, thresholds: Tensor, margin: float = 0.0) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels and a reliability mask.

    Args:
        probs: ``(B, C)`` teacher probabilities.
        thresholds: ``(C,)`` per-class thresholds.
        margin: Keep only entries whose probability is at least ``margin`` away from the
            threshold (0 keeps all).

    Returns:
        ``(labels, mask)``, both ``(B, C)`` float 0/1.
    """
    labels = (probs >= thresholds).to(probs.dtype)
    if margin <= 0:
        return labels, torch.ones_like(labels)
    finite = torch.isfinite(thresholds)
    distance = torch.where(finite, (probs - thresholds).abs(), torch.ones_like(probs))
    return labels, (distance >= margin).to(probs.dtype)
