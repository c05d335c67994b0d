"""Pseudo-label thresholds as pure functions over score tensors.

- CAT (class-distribution-aware thresholds, CAP, NeurIPS 2023): per class, the score at rank
  ``prior_k * n`` among the unlabeled scores, so the pseudo-positive rate equals the prior.
- fixed: one threshold for every class (FixMatch-style).
- F-beta on labeled data (MAT, D2L, ECCV 2024): per class, the threshold that maximises F-beta
  of the teacher's scores on labeled images.

:class:`PseudoLabeller` is the plain module around them that a task holds: the thresholds, the
per-image memory of teacher scores (every process records every process's scores, so all hold
the same memory) and when they are refreshed. Everything it needs to resume is a buffer, so it is saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from cssa_lightning.methods.buffers import adopt_stored_shapes

ThresholdRule = Literal["cat", "fixed", "fbeta"]
ThresholdRefresh = Literal["epoch", "step", "pass"]


def cat_thresholds(scores: Tensor, priors: Tensor, seen: Tensor | None = None) -> Tensor:
    """Per-class thresholds so that ``round(prior_k * n)`` scores of class ``k`` reach them.

    Args:
        scores: ``(n, C)`` teacher probabilities on unlabeled images.
        priors: ``(C,)`` labeled class priors in [0, 1].
        seen: ``(n,)`` bool: only these rows count (``n`` is their number). A mask rather than
            ``scores[seen]`` keeps every shape fixed, so nothing waits for the device.

    Returns:
        ``(C,)`` thresholds; ``inf`` for a class with a zero prior (never pseudo-positive), and
        for every class when no row counts.
    """
    if scores.dim() != 2 or scores.shape[1] != priors.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)} do not match priors {tuple(priors.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("cat_thresholds needs at least one unlabeled score")
    scores = scores.float()
    if seen is None:
        n = torch.tensor(scores.shape[0], device=scores.device)
    else:
        n = seen.sum()
        scores = scores.masked_fill(~seen.unsqueeze(1), float("-inf"))  # ranked last
    ranked = scores.sort(dim=0, descending=True).values
    counts = torch.minimum(torch.round(priors.float().to(scores.device) * n).long(), n)
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


def negative_thresholds(
    scores: Tensor, thresholds: Tensor, keep: float, seen: Tensor | None = None
) -> Tensor:
    """Per-class cut below which pseudo-negatives are trusted (CAP's negative mask).

    Among the scores of class ``k`` under its positive threshold, the lowest ``keep`` fraction
    are kept as negatives; the ones just under the threshold (the top ``1 - keep``) are
    masked out. CAP keeps 99.8 %.

    Args:
        scores: ``(n, C)`` teacher probabilities on unlabeled images.
        thresholds: ``(C,)`` positive thresholds.
        keep: Fraction of the pseudo-negatives kept, in (0, 1]; 1 keeps all (returns ``inf``).
        seen: ``(n,)`` bool: only these rows count (as in :func:`cat_thresholds`).

    Returns:
        ``(C,)`` cuts: a pseudo-negative counts only when its score is ``<=`` the cut.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"the kept fraction of negatives must be in (0, 1], got {keep}")
    num_classes = scores.shape[1]
    if keep >= 1.0 or scores.shape[0] == 0:
        return torch.full((num_classes,), float("inf"), device=scores.device)
    scores = scores.float()
    negative = scores < thresholds.to(scores.device)
    if seen is not None:
        scores = scores.masked_fill(~seen.unsqueeze(1), float("inf"))  # ranked last
        negative &= seen.unsqueeze(1)
    ranked = scores.sort(dim=0).values  # ascending
    counts = torch.floor(negative.sum(0).float() * keep).long()
    cuts = ranked.gather(0, (counts - 1).clamp(min=0).unsqueeze(0)).squeeze(0)
    # No negative kept: a cut below every score.
    return torch.where(counts > 0, cuts, torch.full_like(cuts, float("-inf")))


class PseudoLabels(NamedTuple):
    labels: Tensor  # (B, C) hard 0/1 pseudo-labels
    mask: Tensor  # (B, C) 0/1: which entries a loss may use


Gather = Callable[[Tensor], Tensor]  # (...) -> (world, ...), e.g. LightningModule.all_gather


class PseudoLabeller(nn.Module):
    """Per-class thresholds, the teacher-score memory, and the pseudo-labels they give.

    Args:
        num_classes: Number of classes ``C``.
        rule: How thresholds are chosen: class-distribution-aware (``cat``), one ``fixed``
            value, or F-beta on labeled teacher scores (``fbeta``).
        refresh: When thresholds are recomputed: at each epoch end from the epoch's recorded
            teacher scores (``epoch``), at every step from the latest recorded score of each
            image (``step``), or from one pass of the (then fixed) teacher over every unlabeled
            image at the start of each semi-supervised epoch (``pass``, CAP). In the first two
            modes, thresholds follow every step's scores until the first epoch-end refresh.
        fixed_threshold: The threshold of ``rule="fixed"``.
        fbeta: ``beta`` of ``rule="fbeta"``.
        reliability_margin: Mask entries whose probability is within this distance of the
            threshold (0 keeps all).
        negative_keep: Fraction of each class's pseudo-negatives the mask keeps, lowest scores
            first (CAP: 0.998 drops the negatives just under the threshold); 1 keeps all.
        memory_size: ``None``: the memory holds the latest teacher score of every unlabeled
            image (``N x C`` floats on every process). A number ``W``: it holds the ``W``
            latest recorded score rows, whatever the pool's size (a ring; thresholds then come
            from the most recent ``W`` unlabeled images), for pools too large to keep a row
            per image. Not with ``refresh="pass"``, which needs every image's row.
    """

    def __init__(
        self,
        num_classes: int,
        rule: ThresholdRule = "cat",
        refresh: ThresholdRefresh = "epoch",
        fixed_threshold: float = 0.7,
        fbeta: float = 1.0,
        reliability_margin: float = 0.0,
        negative_keep: float = 1.0,
        memory_size: int | None = None,
    ):
        super().__init__()
        if not 0.0 < negative_keep <= 1.0:
            raise ValueError(f"negative_keep must be in (0, 1], got {negative_keep}")
        if memory_size is not None and memory_size < 1:
            raise ValueError(
                f"memory_size must be a positive number of rows or None, got {memory_size}"
            )
        if memory_size is not None and refresh == "pass":
            raise ValueError(
                "refresh='pass' keeps a row per unlabeled image: memory_size must be None"
            )
        if rule == "fbeta" and refresh == "pass":
            raise ValueError("rule='fbeta' uses labeled scores: refresh='pass' does not apply")
        self.num_classes = num_classes
        self.rule = rule
        self.refresh_mode = refresh
        self.fixed_threshold = fixed_threshold
        self.fbeta = fbeta
        self.reliability_margin = reliability_margin
        self.negative_keep = negative_keep
        self.memory_size = memory_size
        self.register_buffer("thresholds", torch.full((num_classes,), float("inf")))
        self.register_buffer("negative_cuts", torch.full((num_classes,), float("inf")))
        self.register_buffer("ready", torch.tensor(False))
        # Latest teacher score of each unlabeled image and whether it has one; sized by
        # ``allocate`` (or by a checkpoint) since the unlabeled count is known only from data.
        self.register_buffer("scores", torch.zeros(0, num_classes))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        # The ring's next row (memory_size only), saved so a resumed run writes where it left.
        self.register_buffer("cursor", torch.tensor(0, dtype=torch.long))
        # The memory rows the last ``record`` wrote (every process's, in gather order).
        self.last_rows: Tensor | None = None
        self._labeled: list[tuple[Tensor, Tensor]] = []  # (scores, targets) for F-beta
        self.provisional = True  # until the first refresh at an epoch boundary

    @property
    def uses_labeled_scores(self) -> bool:
        """Whether the thresholds come from the teacher's scores of labeled images (F-beta),
        which the training step then records with :meth:`record_labeled`."""
        return self.rule == "fbeta"

    # -- memory ------------------------------------------------------------------------------
    def allocate(self, num_unlabeled: int) -> None:
        """Size the score memory (``memory_size`` rows, else one per unlabeled image); a memory
        of that size (e.g. restored) is kept as it is."""
        rows = self.memory_size or num_unlabeled
        if self.scores.shape[0] != rows:
            device = self.thresholds.device
            self.scores = torch.zeros(rows, self.num_classes, device=device)
            self.seen = torch.zeros(rows, dtype=torch.bool, device=device)
            self.cursor.zero_()
        self.provisional = not bool(self.ready)

    def record(self, index: Tensor, probs: Tensor, gather: Gather | None = None) -> None:
        """Remember the teacher's probabilities of the unlabeled images at ``index``.

        ``gather`` (given when several processes train) adds the other processes' images of
        the same step, so every process holds the same memory as a one-process run: the
        thresholds computed from it need no further exchange.
        """
        probs = probs.detach().float()
        if gather is not None:
            index = gather(index).reshape(-1)
            probs = gather(probs).reshape(-1, self.num_classes)
        if self.memory_size is None:
            rows = index
        else:  # the ring: the next rows after the cursor, the latest W if more arrive
            probs = probs[-self.memory_size :]
            rows = (self.cursor + torch.arange(len(probs), device=probs.device)) % self.memory_size
            self.cursor.copy_((self.cursor + len(probs)) % self.memory_size)
        self.scores[rows] = probs
        self.seen[rows] = True
        self.last_rows = rows

    def record_labeled(self, probs: Tensor, targets: Tensor, gather: Gather | None = None) -> None:
        """Remember labeled teacher scores (only ``rule="fbeta"`` uses them); ``gather`` as in
        :meth:`record`."""
        if self.uses_labeled_scores:
            probs, targets = probs.detach().float(), targets.detach().float()
            if gather is not None:
                probs = gather(probs).reshape(-1, self.num_classes)
                targets = gather(targets).reshape(-1, self.num_classes)
            self._labeled.append((probs, targets))

    def recorded(self, index: Tensor) -> Tensor:
        """The remembered probabilities of the unlabeled images at ``index`` (a memory with a
        row per image only)."""
        if self.memory_size is not None:
            raise RuntimeError("a memory of the latest rows (memory_size) has no row per image")
        return self.scores[index]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints from before the ring have no cursor: the memory they hold is per image.
        state_dict.setdefault(prefix + "cursor", torch.zeros_like(self.cursor))
        # The memory's size comes from the data: take the stored one instead of failing.
        adopt_stored_shapes(self, state_dict, prefix, ("scores", "seen"))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- thresholds --------------------------------------------------------------------------
    def refresh(self, priors: Tensor) -> Tensor:
        """Recompute the thresholds from the memory (or labeled scores).

        With several processes every process holds every process's scores (see
        :meth:`record`), so each computes the same thresholds without exchanging anything.
        Runs without a host synchronisation (it may run at every step): with no score yet the
        previous thresholds are kept on the device.

        Returns:
            A 0-dim bool tensor: whether there was data to compute them from.
        """
        seen = self.seen
        if self.rule == "fbeta":
            if not self._labeled:
                return torch.tensor(False)
            scores = torch.cat([s for s, _ in self._labeled])
            targets = torch.cat([t for _, t in self._labeled])
            thresholds = fbeta_thresholds(scores, targets, self.fbeta)
            found = torch.tensor(True, device=thresholds.device)
        elif self.rule == "fixed":
            thresholds = torch.full_like(self.thresholds, float(self.fixed_threshold))
            found = torch.tensor(True, device=thresholds.device)
        else:
            found = seen.any()
            thresholds = cat_thresholds(self.scores, priors, seen) if len(seen) else None
        if thresholds is None:  # no memory allocated
            return found
        cuts = negative_thresholds(self.scores, thresholds, self.negative_keep, seen)
        self.thresholds.copy_(torch.where(found, thresholds, self.thresholds))
        self.negative_cuts.copy_(torch.where(found, cuts, self.negative_cuts))
        self.ready.logical_or_(found)
        return found

    def end_epoch(self, priors: Tensor) -> None:
        """Epoch boundary: refresh (``refresh="epoch"``) and forget the labeled scores."""
        if self.refresh_mode == "epoch":
            self.refresh(priors)
        if self.refresh_mode != "pass":
            self.provisional = not bool(self.ready)
        self._labeled.clear()

    def step_refresh(self, priors: Tensor) -> None:
        """Within an epoch: follow the step's scores when the mode asks (``step``) or while the
        thresholds are provisional (before the first epoch-end refresh or first pass)."""
        if self.refresh_mode == "step" or self.provisional:
            self.refresh(priors)

    def refresh_from_pass(self, priors: Tensor) -> None:
        """After a pass of the fixed teacher has recorded every image: final thresholds."""
        self.refresh(priors)
        self.provisional = False

    # -- labels ------------------------------------------------------------------------------
    def forward(self, probs: Tensor) -> PseudoLabels:
        """Hard pseudo-labels and the mask of entries a loss may use."""
        labels, mask = pseudo_labels(probs, self.thresholds, self.reliability_margin)
        if self.negative_keep < 1.0:
            trusted_negative = probs <= self.negative_cuts
            mask = mask * torch.where(labels > 0, torch.ones_like(mask), trusted_negative.to(mask))
        return PseudoLabels(labels, mask)
