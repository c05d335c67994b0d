"""``CSSATask``: context-based semantic-aware alignment for semi-supervised multi-label learning.

On top of :class:`~cssa_lightning.methods.mean_teacher.MeanTeacherTask` (the EMA teacher, pseudo-labels
and consistency): label-specific features by label-query cross-attention, one-to-one semantic
alignment, an absent-label push and context identification, each one more row of the loss
table. With its switches off (``label_specific``, ``alignment.enabled``, ``context.enabled``) it trains
exactly as the CAP baseline, ``MeanTeacherTask`` (checkpoints of the CAP runs of that form
keep loading).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from cssa_lightning.methods.contexts import cluster_contexts, context_targets, cooccurrence_affinity
from cssa_lightning.methods.loss_terms import LossTerm, option
from cssa_lightning.methods.losses import (
    absent_push_loss,
    context_loss,
    cosine_alignment_loss,
    pair_normalizer,
    semantic_alignment_loss,
)
from cssa_lightning.methods.mean_teacher import MeanTeacherTask
from cssa_lightning.methods.options import (
    ALIGNMENT_DEFAULTS,
    CONTEXT_DEFAULTS,
    AlignmentOptions,
    ContextOptions,
    lookup,
    move_flat_names,
    take_group,
)
from cssa_lightning.methods.pseudo_labels import PseudoLabels
from cssa_lightning.networks.network import Encoded

log = logging.getLogger(__name__)


def aligns_unlabeled(hparams: Mapping[str, Any]) -> bool:
    """The switch of ``align_u``: alignment on, with some unlabeled positives to align."""
    return bool(lookup(hparams, "alignment.enabled")) and (
        lookup(hparams, "alignment.unlabeled") != "none"
    )


def pushes_absent(hparams: Mapping[str, Any]) -> bool:
    """The switch of ``push`` and ``push_u``: alignment on and a positive push weight."""
    return bool(lookup(hparams, "alignment.enabled")) and (
        lookup(hparams, "alignment.absent_push_weight") > 0
    )


def aligns_in_warmup(hparams: Mapping[str, Any]) -> bool:
    """Whether ``align`` runs in the warm-up (and then at full weight, without the ramp)."""
    return bool(lookup(hparams, "alignment.in_warmup", False))


class CSSATask(MeanTeacherTask):
    """CSSA: the mean-teacher task with label-specific features, alignment and contexts.

    Its loss table adds, to ``sup`` and ``cons``, the alignment (``align``, ``align_u``), the
    absent-label push (``push``, ``push_u``) and the context terms (``ctx``, ``ctx_u``) of the
    labeled images and of the unlabeled images' strong views. After the warm-up the total is
    ``L_sup + w_a (L_align + L_align_u) + lambda_u L_cons + w_c (L_ctx + L_ctx_u)
    + w_p (L_push + L_push_u)``, where ``w_a``, ``w_c``, ``w_p`` ramp with ``lambda_u`` when
    ``ramp_auxiliary`` is on. A subclass changes one term by overriding the method that
    computes it (see :attr:`loss_terms`).

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        label_specific: Label-specific features by label-query cross-attention; ``False``
            uses the global feature for every label.
        attention_heads: Heads of the label-query cross-attention.
        label_query_block: What extracts the label-specific features: one cross-attention
            layer without norm or MLP (``attention``), or ``label_query_depth`` pre-norm
            decoder blocks, cross-attention + MLP, Query2Label / ML-Decoder style
            (``decoder``); both start as the global feature (zero-initialised output).
        label_query_depth: Blocks of the ``decoder`` (1-2 are usual).
        cross_attention_lr: Peak learning rate of the cross-attention; ``None`` uses
            ``head_lr``.
        label_specific_max_skill: Label-specific features only for the classes the start
            network (the zero-shot CLIP) does not know: those whose skill on the labeled
            images as the fit starts (AP above chance, as ``pseudo.min_prior_skill`` measures
            it) is below this. The others are scored from the global feature, as CLIP was
            pre-trained to score them, and get no alignment or push (it would pull the one
            global feature towards several targets). ``None``: every class (the paper).
        alignment: The one-to-one semantic alignment of label features and the absent-label
            push (:class:`~cssa_lightning.methods.options.AlignmentOptions`).
        context: The context identification task
            (:class:`~cssa_lightning.methods.options.ContextOptions`).
        **kwargs: Options of :class:`~cssa_lightning.methods.mean_teacher.MeanTeacherTask` (the
            teacher, pseudo-labels, consistency and schedule) and of
            :class:`~cssa_lightning.methods.multilabel.MultiLabelTask`.
    """

    # Labeled rows before unlabeled ones is the order the terms are computed and summed in.
    loss_terms = MeanTeacherTask.loss_terms + (
        LossTerm(
            "align",
            "labeled",
            "alignment_loss",
            weight="alignment.weight",
            ramp=lambda hp: "none" if aligns_in_warmup(hp) else "auxiliary",
            enabled=option("alignment.enabled"),
            warmup=aligns_in_warmup,
        ),
        LossTerm(
            "push",
            "labeled",
            "absent_push_term",
            weight="alignment.absent_push_weight",
            ramp="auxiliary",
            enabled=pushes_absent,
        ),
        LossTerm(
            "ctx",
            "labeled",
            "context_loss",
            weight="context.weight",
            ramp="auxiliary",
            enabled=option("context.enabled"),
        ),
        LossTerm(
            "align_u",
            "unlabeled",
            "unlabeled_alignment_term",
            weight="alignment.weight",
            ramp="auxiliary",
            enabled=aligns_unlabeled,
        ),
        LossTerm(
            "push_u",
            "unlabeled",
            "unlabeled_absent_push_term",
            weight="alignment.absent_push_weight",
            ramp="auxiliary",
            enabled=pushes_absent,
        ),
        LossTerm(
            "ctx_u",
            "unlabeled",
            "unlabeled_context_term",
            weight="context.weight",
            ramp="auxiliary",
            enabled=option("context.enabled"),
        ),
    )

    def __init__(
        self,
        class_names: list[str],
        label_specific: bool = True,
        attention_heads: int = 8,
        label_query_block: Literal["attention", "decoder"] = "attention",
        label_query_depth: int = 1,
        cross_attention_lr: float | None = None,
        label_specific_max_skill: float | None = None,
        alignment: AlignmentOptions = ALIGNMENT_DEFAULTS,
        context: ContextOptions = CONTEXT_DEFAULTS,
        **kwargs: Any,
    ):
        if label_specific_max_skill is not None and not 0.0 <= label_specific_max_skill <= 1.0:
            raise ValueError(
                f"label_specific_max_skill must be in [0, 1], got {label_specific_max_skill}"
            )
        move_flat_names(kwargs, ("pseudo", "alignment", "context"))
        alignment = take_group(AlignmentOptions, "alignment", alignment, kwargs, ALIGNMENT_DEFAULTS)
        context = take_group(ContextOptions, "context", context, kwargs, CONTEXT_DEFAULTS)
        # Set before the base class builds the network (network_options reads them).
        self.alignment_options, self.context_options = alignment, context
        super().__init__(class_names, **kwargs)
        # Data-dependent state, filled in on_fit_start and saved in checkpoints.
        self.register_buffer("class_to_context", torch.zeros(len(class_names), dtype=torch.long))

    def option_groups(self) -> dict[str, Any]:
        return {
            **super().option_groups(),
            "alignment": self.alignment_options,
            "context": self.context_options,
        }

    def modules_idle_in_warmup(self) -> list[str]:
        # The context head is trained by the context terms only, which start after warm-up.
        return ["net.context_head"] if self.net.context_head is not None else []

    def network_options(self) -> dict[str, Any]:
        hp, context = self.hparams, self.context_options
        return dict(
            label_specific=hp.label_specific,
            attention_heads=hp.attention_heads,
            label_query_block=hp.get("label_query_block", "attention"),
            label_query_depth=hp.get("label_query_depth", 1),
            num_contexts=context.num_contexts if context.enabled else 0,
            context_hidden=context.hidden,
            context_input=context.input,
            context_queries=context.enabled and context.inform_queries,
            label_specific_subset=self.label_specific_subset(),
        )

    def label_specific_subset(self) -> bool:
        """Whether some classes may be scored from the global feature
        (``label_specific_max_skill``; no effect without label-specific features)."""
        hp = self.hparams
        return bool(hp.label_specific) and hp.get("label_specific_max_skill") is not None

    def uses_start_skill(self) -> bool:
        return super().uses_start_skill() or self.label_specific_subset()

    def trust_classes(self, skill: Tensor) -> None:
        """Also the classes with label-specific features (``label_specific_max_skill``)."""
        super().trust_classes(skill)
        if self.label_specific_subset():
            max_skill = self.hparams.label_specific_max_skill
            self.net.label_specific_classes.copy_((skill < max_skill).float())
            log.info(
                "label-specific features for %d of %d classes (start skill < %g)",
                int(self.net.label_specific_classes.sum()),
                len(skill),
                max_skill,
            )

    def parameter_lr(self, name: str) -> float:
        lr = self.hparams.cross_attention_lr
        if lr is not None and name.startswith("net.cross_attention."):
            return lr
        return super().parameter_lr(name)

    def learn_label_statistics(self, labeled: Tensor) -> None:
        """The class priors, and the contexts from the labeled co-occurrence."""
        super().learn_label_statistics(labeled)
        if self.context_options.enabled:
            contexts = cluster_contexts(
                cooccurrence_affinity(labeled.numpy()),
                self.context_options.num_contexts,
                self.context_options.seed,
            )
            self.class_to_context.copy_(torch.as_tensor(contexts))
            log.info(
                "contexts from labeled co-occurrence: %s",
                context_groups(self.class_names, contexts),
            )

    # -- what the unlabeled terms receive (override one to change it) -------------------------
    def alignment_positives(self, probs: Tensor, pseudo: PseudoLabels) -> Tensor:
        """Weights of the unlabeled ``(image, label)`` pairs the alignment loss pulls."""
        options = self.alignment_options
        labels, mask = pseudo
        if options.unlabeled == "confident":
            return labels * mask * (probs >= self.thresholds + options.margin)
        if options.unlabeled == "weighted":
            return labels * mask * probs
        if options.unlabeled == "none":
            return torch.zeros_like(labels)
        return labels * mask

    # -- the losses -------------------------------------------------------------------------
    def alignment_targets(self) -> list[Tensor]:
        """``(C, D)`` features the label features are aligned with (``alignment.target``)."""
        target = self.alignment_options.target
        targets = []
        if target in ("text", "both"):
            targets.append(self.net.class_text_features())
        if target in ("prototype", "both"):
            targets.append(self.net.alignment.prototypes)
        if self.alignment_options.detach_targets:
            return [features.detach() for features in targets]
        return targets

    def aligned_features(self, encoded: Encoded) -> Tensor:
        """The label features the alignment and the push read: without their gradient with
        ``alignment.detach_features`` (only the prototypes then move)."""
        features = encoded.label_features
        return features.detach() if self.alignment_options.detach_features else features

    def aligned_pairs(self, weights: Tensor) -> Tensor:
        """``weights`` of the ``(image, label)`` pairs without the classes scored from the
        global feature (``label_specific_max_skill``)."""
        mask = self.net.label_specific_mask
        return weights if mask is None else weights * mask

    def alignment_loss(self, encoded: Encoded, positives: Tensor) -> Tensor:
        """One-to-one alignment of each positive label's feature with its class text and/or
        its classifier prototype (``alignment.target``): contrastive, or the pull alone
        (``alignment.loss``)."""
        options = self.alignment_options
        positives = self.aligned_pairs(positives)
        normalizer = self.pair_normalizer(positives)
        features = self.aligned_features(encoded)

        def align(target: Tensor) -> Tensor:
            if options.loss == "cosine":
                return cosine_alignment_loss(features, target, positives, normalizer)
            return semantic_alignment_loss(
                features, target, positives, options.temperature, normalizer
            )

        losses = [align(target) for target in self.alignment_targets()]
        return sum(losses) / len(losses)

    def absent_push_loss(self, encoded: Encoded, negatives: Tensor) -> Tensor:
        """Push absent labels' features away from their class's alignment target."""
        margin = self.alignment_options.absent_push_margin
        negatives = self.aligned_pairs(negatives)
        normalizer = self.pair_normalizer(negatives)
        features = self.aligned_features(encoded)
        losses = [
            absent_push_loss(features, target, negatives, margin, normalizer)
            for target in self.alignment_targets()
        ]
        return sum(losses) / len(losses)

    def pair_normalizer(self, weights: Tensor) -> Tensor:
        """Denominator of the per-pair means (alignment, push): the pairs of every process's
        batch, so several processes train like one with their batches together."""
        world = self._trainer.world_size if self._trainer is not None else 1
        return pair_normalizer(weights, world, self.sum_over_processes)

    def sum_over_processes(self, tensor: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def context_loss(self, encoded: Encoded, labels: Tensor) -> Tensor:
        """Context identification loss against the contexts of ``labels``."""
        options = self.context_options
        single = options.target == "single"
        targets = context_targets(labels, self.class_to_context, options.num_contexts, single)
        if single and not (targets >= 0).any():
            return encoded.context_logits.sum() * 0.0
        return context_loss(encoded.context_logits, targets, single, options.reduction)

    # -- the terms of the loss table ----------------------------------------------------------
    def absent_push_term(self, student: Encoded, targets: Tensor) -> Tensor:
        """``push``: the labeled images' absent labels pushed from their targets."""
        return self.absent_push_loss(student, 1 - targets)

    def unlabeled_alignment_term(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> Tensor:
        """``align_u``: the strong views' :meth:`alignment_positives` aligned."""
        return self.alignment_loss(strong, self.alignment_positives(probs, pseudo))

    def unlabeled_absent_push_term(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> Tensor:
        """``push_u``: the strong views' trusted pseudo-negatives pushed away."""
        return self.absent_push_loss(strong, (1 - pseudo.labels) * pseudo.mask)

    def unlabeled_context_term(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> Tensor:
        """``ctx_u``: the strong views' contexts against those of the hard pseudo-labels (only
        the trusted ones with ``context.unlabeled_targets="trusted"``)."""
        labels = pseudo.labels
        if self.context_options.unlabeled_targets == "trusted":
            labels = labels * pseudo.mask
        return self.context_loss(strong, labels)


def context_groups(class_names: list[str], class_to_context: np.ndarray) -> dict[int, list[str]]:
    """Class names per context, for logging and notebooks."""
    groups: dict[int, list[str]] = {}
    for name, context in zip(class_names, class_to_context.tolist(), strict=True):
        groups.setdefault(int(context), []).append(name)
    return groups
