"""Losses as pure functions over logits and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(per_element: Tensor, mask: Tensor | None) -> Tensor:
    # Sum over classes, mean over images: the usual multi-label convention (ASL, CAP).
    if mask is not None:
        per_element = per_element * mask
    return per_element.sum() / max(per_element.shape[0], 1)


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    mask: Tensor | None = None,
    eps: float = 1e-8,
    detach_focus: bool = False,
) -> Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label logits.

    ``L = -sum_k [ y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m) ]`` with ``p_m = max(p - clip, 0)``,
    summed over classes and averaged over images. ``targets`` may be soft; ``mask`` (same shape)
    zeroes entries that should not count. ``detach_focus`` treats the focusing weights
    ``(1-p)^g+`` and ``p_m^g-`` as constants (no gradient through them), as the ASL authors'
    ``disable_torch_grad_focal_loss`` and CAP's code do.
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    prob = torch.sigmoid(logits)
    prob_neg = (prob - clip).clamp(min=0) if clip > 0 else prob
    loss_pos = targets * F.logsigmoid(logits)
    loss_neg = (1 - targets) * torch.log((1 - prob_neg).clamp(min=eps))
    focus_prob, focus_neg = (prob.detach(), prob_neg.detach()) if detach_focus else (prob, prob_neg)
    if gamma_pos > 0:
        loss_pos = loss_pos * (1 - focus_prob).pow(gamma_pos)
    if gamma_neg > 0:
        loss_neg = loss_neg * focus_neg.pow(gamma_neg)
    return _reduce(-(loss_pos + loss_neg), mask)


def binary_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """BCE with logits, summed over classes and averaged over images (same scale as ASL)."""
    logits = logits.float()
    per_element = F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), reduction="none"
    )
    return _reduce(per_element, mask)


def semantic_alignment_loss(
    label_features: Tensor,
    text_features: Tensor,
    positives: Tensor,
    temperature: float = 0.07,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """One-to-one contrastive alignment of label-specific features with their label texts.

    For each positive ``(b, k)``: ``-log softmax_j(cos(v_bk, t_j) / tau)[k]``, averaged over the
    positives (zero when there is none).

    Args:
        label_features: ``(B, C, D)`` label-specific image features ``V``.
        text_features: ``(C, D)`` class text features ``T``.
        positives: ``(B, C)`` 0/1 (or weights): which ``(image, label)`` pairs to align.
        temperature: ``tau``.
        normalizer: What the sum over positives is divided by; ``None``: their total weight
            (at least 1). Several processes pass the count over every process's batch (see
            :func:`pair_normalizer`).
    """
    features = F.normalize(label_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    logits = torch.einsum("bkd,jd->bkj", features, text) / temperature
    own = logits.log_softmax(-1).diagonal(dim1=1, dim2=2)  # (B, C): log p(k | v_bk)
    weights = positives.to(own.dtype)
    return -(own * weights).sum() / _normalizer(weights, normalizer)


def own_target_cosine(label_features: Tensor, targets: Tensor) -> Tensor:
    """``(B, C)`` cosine of each label feature ``v_bk`` with its own class's target ``a_k``."""
    features = F.normalize(label_features.float(), dim=-1)
    return torch.einsum("bkd,kd->bk", features, F.normalize(targets.float(), dim=-1))


def cosine_alignment_loss(
    label_features: Tensor,
    targets: Tensor,
    positives: Tensor,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """The pull of :func:`semantic_alignment_loss` without its push: for each positive
    ``(b, k)``, ``1 - cos(v_bk, a_k)``, averaged over the positives (zero when there is none).

    Args:
        label_features: ``(B, C, D)`` label-specific image features ``V``.
        targets: ``(C, D)`` each class's alignment target ``a_k`` (text or prototype).
        positives: ``(B, C)`` 0/1 (or weights): which ``(image, label)`` pairs to align.
        normalizer: As in :func:`semantic_alignment_loss`.
    """
    cosine = own_target_cosine(label_features, targets)
    weights = positives.to(cosine.dtype)
    return ((1 - cosine) * weights).sum() / _normalizer(weights, normalizer)


def context_loss(
    logits: Tensor, targets: Tensor, single_label: bool = False, reduction: str = "mean"
) -> Tensor:
    """Context identification loss: BCE over multi-hot contexts, or CE over one context.

    ``reduction="mean"`` averages the BCE over images and contexts; ``"sum"`` sums it over the
    contexts and averages over images, as the supervised ASL does over classes (so the term is
    not ~K times lighter than its weight says). CE is per image either way.
    """
    logits = logits.float()
    if single_label:
        return F.cross_entropy(logits, targets.long())
    if reduction == "sum":
        per_entry = F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), reduction="none"
        )
        return per_entry.sum(-1).mean()
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def absent_push_loss(
    label_features: Tensor,
    targets: Tensor,
    negatives: Tensor,
    margin: float = 0.0,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Push the features of absent labels away from their class's target.

    The alignment loss only pulls present labels' features to their class; the feature that
    label query ``k`` extracts from an image without class ``k`` is left free and, scored against
    ``w_k``, can still look like ``k``. For each absent ``(b, k)``:
    ``relu(cos(v_bk, a_k) - margin)``, averaged over the absent pairs (zero when none).

    Args:
        label_features: ``(B, C, D)`` label-specific image features ``V``.
        targets: ``(C, D)`` each class's alignment target ``a_k`` (text or prototype).
        negatives: ``(B, C)`` 0/1 (or weights): which ``(image, label)`` pairs are absent.
        margin: Cosine below which an absent label's feature is left alone.
        normalizer: As in :func:`semantic_alignment_loss`.
    """
    cosine = own_target_cosine(label_features, targets)
    weights = negatives.to(cosine.dtype)
    return ((cosine - margin).clamp(min=0) * weights).sum() / _normalizer(weights, normalizer)


def pair_normalizer(weights: Tensor, world_size: int = 1, all_reduce=None) -> Tensor:
    """The denominator of a mean over weighted pairs that makes ``world_size`` processes train
    like one process with their batches together.

    Data-parallel training averages the processes' gradients, so each process divides its sum
    by the total weight of every process's pairs over ``world_size``, not by its own total
    (which would give a process with few pairs as much say as one with many).

    Args:
        weights: This process's pair weights.
        world_size: Number of processes.
        all_reduce: Sums a tensor over processes (needed when ``world_size > 1``).
    """
    total = weights.detach().sum().float()
    if world_size > 1:
        total = all_reduce(total)
    return total.clamp(min=1.0) / world_size


def _normalizer(weights: Tensor, normalizer: Tensor | float | None) -> Tensor | float:
    return weights.sum().clamp(min=1.0) if normalizer is None else normalizer
