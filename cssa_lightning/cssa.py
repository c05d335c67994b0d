"""``CSSATask``: context-based semantic-aware alignment for semi-supervised multi-label learning.

On top of :class:`~cssa_lightning.multilabel.MultiLabelTask`: label-specific features by
label-query cross-attention, one-to-one semantic alignment, context identification, an EMA
teacher giving pseudo-labels on the weak view, and consistency on the strong view. With the
switches off it is the CAP baseline (see ``configs/cap_coco.yaml``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

from cssa_lightning.contexts import cluster_contexts, context_targets, cooccurrence_affinity
from cssa_lightning.losses import context_loss, semantic_alignment_loss
from cssa_lightning.multilabel import MultiLabelTask
from cssa_lightning.network import Encoded
from cssa_lightning.pseudo_labels import (
    cat_thresholds,
    fbeta_thresholds,
    fixed_thresholds,
    pseudo_labels,
)

log = logging.getLogger(__name__)


class CSSATask(MultiLabelTask):
    """CSSA: labeled + unlabeled training with a CLIP student and an EMA teacher.

    Total loss after ``warmup_epochs`` of supervised-only training:
    ``L_sup + alignment_weight * L_align + lambda_u(t) * L_cons
    + context_weight * (L_ctx_labeled + L_ctx_unlabeled)``, where ``lambda_u`` ramps linearly
    to ``consistency_weight`` over ``rampup_epochs``.

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        label_specific: Label-specific features by label-query cross-attention; ``False``
            uses the global feature for every label.
        attention_heads: Heads of the label-query cross-attention.
        use_alignment: Add the one-to-one semantic alignment loss.
        alignment_weight: Weight of the alignment loss.
        alignment_temperature: Temperature ``tau`` of the alignment loss.
        alignment_unlabeled: Which pseudo-positives of unlabeled images the alignment pulls to
            their texts: every pseudo-positive kept by the reliability mask (``all``), only
            those whose teacher probability clears the threshold by ``alignment_margin``
            (``confident``), every pseudo-positive weighted by its teacher probability
            (``weighted``), or none: labeled images only (``none``).
        alignment_margin: The margin of ``alignment_unlabeled="confident"``.
        alignment_target: What each label feature is aligned with: the frozen class text
            ``t_k``, the classifier's (learnable) prototype ``w_k`` that the label is scored
            with, or both (mean of the two losses).
        use_context: Add the context identification task.
        num_contexts: Contexts ``K`` found by spectral clustering of labeled co-occurrence.
        context_weight: Weight of the context losses.
        context_target: Multi-hot contexts with BCE, or one context per image with CE.
        context_input: Feature the context head reads: global, or the mean label feature.
        context_hidden: Hidden width of the context head.
        context_seed: Seed of the spectral clustering.
        use_consistency: Add the teacher/student consistency loss on unlabeled images.
        consistency_weight: Final weight ``lambda_u`` of the consistency loss.
        warmup_epochs: Epochs of supervised-only training before the other losses start.
        rampup_epochs: Epochs over which ``lambda_u`` grows linearly after the warm-up.
        ramp_auxiliary: Ramp the alignment and context weights with the same linear ramp as
            ``lambda_u`` (else they start at full weight when the warm-up ends).
        teacher_restart: Restart the EMA teacher from the student when the warm-up ends, so
            the semi-supervised phase starts from the warmed-up model (as CAP does) rather than
            from an average that still remembers the first steps.
        pseudo_threshold: How thresholds are chosen: class-distribution-aware (CAT), one fixed
            value, or F-beta on labeled teacher scores (MAT).
        fixed_threshold: The threshold of ``pseudo_threshold="fixed"``.
        fbeta: ``beta`` of ``pseudo_threshold="fbeta"``.
        threshold_refresh: Recompute thresholds at each epoch end from the epoch's teacher
            scores (gathered across processes), or at every step from the latest teacher score of
            each image seen so far (this process's only). Until the first epoch-end refresh,
            thresholds follow every step's scores in both modes.
        reliability_margin: Mask pseudo-labels whose teacher probability is within this
            distance of the threshold (0 keeps all).
        ema_decay: Decay of the teacher's exponential moving average.
        **kwargs: Options of :class:`~cssa_lightning.multilabel.MultiLabelTask`.
    """

    evaluated_scores = ("", "_teacher")

    def __init__(
        self,
        class_names: list[str],
        label_specific: bool = True,
        attention_heads: int = 8,
        use_alignment: bool = True,
        alignment_weight: float = 1.0,
        alignment_temperature: float = 0.07,
        alignment_unlabeled: Literal["all", "confident", "weighted", "none"] = "all",
        alignment_margin: float = 0.2,
        alignment_target: Literal["text", "prototype", "both"] = "text",
        use_context: bool = True,
        num_contexts: int = 5,
        context_weight: float = 1.0,
        context_target: Literal["multi_hot", "single"] = "multi_hot",
        context_input: Literal["global", "label_mean"] = "global",
        context_hidden: int = 256,
        context_seed: int = 0,
        use_consistency: bool = True,
        consistency_weight: float = 1.0,
        warmup_epochs: int = 12,
        rampup_epochs: float = 1.0,
        ramp_auxiliary: bool = False,
        teacher_restart: bool = False,
        pseudo_threshold: Literal["cat", "fixed", "fbeta"] = "cat",
        fixed_threshold: float = 0.7,
        fbeta: float = 1.0,
        threshold_refresh: Literal["epoch", "step"] = "epoch",
        reliability_margin: float = 0.0,
        ema_decay: float = 0.999,
        **kwargs: Any,
    ):
        if use_context and num_contexts < 1:
            raise ValueError(f"num_contexts must be >= 1 with use_context, got {num_contexts}")
        super().__init__(class_names, **kwargs)
        num_classes = len(class_names)
        self.teacher = AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
        )
        self.teacher.requires_grad_(False)
        # Data-dependent state, filled in on_fit_start / epoch ends and saved in checkpoints.
        self.register_buffer("class_priors", torch.zeros(num_classes))
        self.register_buffer("class_to_context", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("thresholds", torch.full((num_classes,), float("inf")))
        self.register_buffer("thresholds_ready", torch.tensor(False))
        self.pseudo_metrics = MetricCollection(
            {
                "precision": MultilabelPrecision(num_classes, average="micro"),
                "recall": MultilabelRecall(num_classes, average="micro"),
                "F1": MultilabelF1Score(num_classes, average="micro"),
            }
        )
        self._unlabeled_scores: Tensor | None = None  # latest teacher score of each image
        self._unlabeled_seen: Tensor | None = None
        self._labeled_scores: list[tuple[Tensor, Tensor]] = []  # for F-beta thresholds
        # True until the first epoch-end refresh: thresholds then follow every step's scores.
        self._provisional_thresholds = True

    def network_options(self) -> dict[str, Any]:
        hp = self.hparams
        return dict(
            label_specific=hp.label_specific,
            attention_heads=hp.attention_heads,
            num_contexts=hp.num_contexts if hp.use_context else 0,
            context_hidden=hp.context_hidden,
            context_input=hp.context_input,
        )

    @property
    def uses_unlabeled(self) -> bool:
        hp = self.hparams
        return hp.use_consistency or hp.use_context or hp.use_alignment

    # -- data-dependent state ----------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = self.trainer.datamodule
        labeled = torch.as_tensor(datamodule.labeled_targets())
        self.class_priors.copy_(labeled.mean(0))
        if self.hparams.use_context:
            contexts = cluster_contexts(
                cooccurrence_affinity(labeled.numpy()),
                self.hparams.num_contexts,
                self.hparams.context_seed,
            )
            self.class_to_context.copy_(torch.as_tensor(contexts))
            log.info(
                "contexts from labeled co-occurrence: %s",
                context_groups(self.class_names, contexts),
            )
        if int(self.teacher.n_averaged) == 0:
            # Start the teacher from the (bias-calibrated) student, not from __init__'s copy.
            self.teacher.module.load_state_dict(self.net.state_dict())
        self._provisional_thresholds = not bool(self.thresholds_ready)  # resumed runs have them
        num_unlabeled = len(datamodule.unlabeled_indices)
        self._unlabeled_scores = torch.zeros(num_unlabeled, self.num_classes, device=self.device)
        self._unlabeled_seen = torch.zeros(num_unlabeled, dtype=torch.bool, device=self.device)

    # -- pieces of a training step (override in a subclass to change one) ---------------------
    def ramp(self, batch_idx: int) -> float:
        """0 during warm-up, then linear from 0 to 1 over ``rampup_epochs``."""
        hp = self.hparams
        batches = max(int(self.trainer.num_training_batches), 1)
        progress = self.current_epoch + batch_idx / batches - hp.warmup_epochs
        if progress < 0:
            return 0.0
        return 1.0 if hp.rampup_epochs <= 0 else min(1.0, progress / hp.rampup_epochs)

    def unsupervised_weight(self, batch_idx: int) -> float:
        """``lambda_u(t)``: 0 during warm-up, then a linear ramp to ``consistency_weight``."""
        return self.hparams.consistency_weight * self.ramp(batch_idx)

    def auxiliary_weights(self, batch_idx: int) -> tuple[float, float]:
        """Weights of the alignment and context losses at this step."""
        hp = self.hparams
        ramp = self.ramp(batch_idx) if hp.ramp_auxiliary else 1.0
        return hp.alignment_weight * ramp, hp.context_weight * ramp

    def in_warmup(self) -> bool:
        return self.current_epoch < self.hparams.warmup_epochs

    @torch.no_grad()
    def teacher_probs(self, images: Tensor) -> Tensor:
        """Teacher probabilities on (weak-view) images."""
        self.teacher.eval()
        return torch.sigmoid(self.teacher(images).logits.float())

    def pseudo_labels(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Hard pseudo-labels and reliability mask from teacher probabilities."""
        return pseudo_labels(probs, self.thresholds, self.hparams.reliability_margin)

    def alignment_loss(self, encoded: Encoded, positives: Tensor) -> Tensor:
        """One-to-one alignment of each positive label's feature with its class text and/or
        its classifier prototype (``alignment_target``)."""
        hp = self.hparams
        targets = []
        if hp.alignment_target in ("text", "both"):
            targets.append(self.net.class_text_features())
        if hp.alignment_target in ("prototype", "both"):
            targets.append(self.net.alignment.prototypes)
        losses = [
            semantic_alignment_loss(
                encoded.label_features, target, positives, hp.alignment_temperature
            )
            for target in targets
        ]
        return sum(losses) / len(losses)

    def unlabeled_alignment_positives(self, probs: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Weights of the unlabeled ``(image, label)`` pairs the alignment loss uses."""
        hp = self.hparams
        if hp.alignment_unlabeled == "confident":
            return labels * mask * (probs >= self.thresholds + hp.alignment_margin)
        if hp.alignment_unlabeled == "weighted":
            return labels * mask * probs
        if hp.alignment_unlabeled == "none":
            return torch.zeros_like(labels)
        return labels * mask

    def consistency_loss(self, strong_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """The supervised loss between strong-view student scores and teacher pseudo-labels."""
        return self.supervised_loss(strong_logits, labels, mask)

    def context_loss(self, encoded: Encoded, labels: Tensor) -> Tensor:
        """Context identification loss against the contexts of ``labels``."""
        single = self.hparams.context_target == "single"
        targets = context_targets(labels, self.class_to_context, self.hparams.num_contexts, single)
        if single and not (targets >= 0).any():
            return encoded.context_logits.sum() * 0.0
        return context_loss(encoded.context_logits, targets, single)

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        zero = torch.zeros((), device=self.device)
        losses = {"sup": zero, "align": zero, "cons": zero, "ctx": zero}
        warmup = self.in_warmup()

        student = self.encode(labeled["image"])
        losses["sup"] = self.supervised_loss(student.logits, labeled["target"])
        if not warmup and hp.use_alignment:
            losses["align"] = self.alignment_loss(student, labeled["target"])
        if not warmup and hp.use_context:
            losses["ctx"] = self.context_loss(student, labeled["target"])
        if hp.pseudo_threshold == "fbeta":
            self._labeled_scores.append((self.teacher_probs(labeled["image"]), labeled["target"]))

        lambda_u, mask_ratio = 0.0, zero
        if unlabeled is not None:
            probs = self.teacher_probs(unlabeled["image_weak"])
            self._record_unlabeled(unlabeled["index"], probs)
            if hp.threshold_refresh == "step" or self._provisional_thresholds:
                self.refresh_thresholds(gather=False)
            labels, mask = self.pseudo_labels(probs)
            # Monitoring only: the hidden labels never reach a loss.
            self.pseudo_metrics.update(labels, unlabeled["target"].long())
            mask_ratio = mask.mean()
            if not warmup and self.uses_unlabeled:
                strong = self.encode(unlabeled["image_strong"])
                lambda_u = self.unsupervised_weight(batch_idx)
                if hp.use_consistency:
                    losses["cons"] = self.consistency_loss(strong.logits, labels, mask)
                if hp.use_alignment and hp.alignment_unlabeled != "none":
                    positives = self.unlabeled_alignment_positives(probs, labels, mask)
                    losses["align"] = losses["align"] + self.alignment_loss(strong, positives)
                if hp.use_context:
                    losses["ctx"] = losses["ctx"] + self.context_loss(strong, labels)

        alignment_weight, context_weight = self.auxiliary_weights(batch_idx)
        total = (
            losses["sup"]
            + alignment_weight * losses["align"]
            + lambda_u * losses["cons"]
            + context_weight * losses["ctx"]
        )
        size = labeled["image"].shape[0]
        log_values = {f"train/loss_{name}": value for name, value in losses.items()}
        log_values.update({"train/loss": total, "train/mask_ratio": mask_ratio})
        self.log_dict(log_values, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lambda_u", lambda_u, on_step=True, on_epoch=False, batch_size=size)
        return total

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if hp.teacher_restart and hp.warmup_epochs > 0 and self.current_epoch == hp.warmup_epochs:
            self.teacher.module.load_state_dict(self.net.state_dict())
            log.info("teacher restarted from the student at epoch %d", self.current_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.teacher.update_parameters(self.net)

    def _record_unlabeled(self, index: Tensor, probs: Tensor) -> None:
        self._unlabeled_scores[index] = probs.detach()
        self._unlabeled_seen[index] = True

    def refresh_thresholds(self, gather: bool) -> None:
        """Recompute the per-class thresholds from the recorded teacher scores."""
        hp = self.hparams
        if hp.pseudo_threshold == "fixed":
            thresholds = fixed_thresholds(self.num_classes, hp.fixed_threshold, self.device)
        elif hp.pseudo_threshold == "fbeta":
            if not self._labeled_scores:
                return
            scores = torch.cat([s for s, _ in self._labeled_scores])
            targets = torch.cat([t for _, t in self._labeled_scores])
            if gather:
                scores = self.all_gather(scores).reshape(-1, self.num_classes)
                targets = self.all_gather(targets).reshape(-1, self.num_classes)
            thresholds = fbeta_thresholds(scores, targets, hp.fbeta)
        else:
            scores, seen = self._unlabeled_scores, self._unlabeled_seen
            if gather and self.trainer.world_size > 1:
                # Each image was scored on one process this epoch: merge by the seen masks.
                # (gathered as floats: not every backend gathers bool tensors)
                all_seen = self.all_gather(seen.float()).reshape(-1, len(seen))
                all_scores = self.all_gather(scores).reshape(-1, *scores.shape)
                weights = all_seen.unsqueeze(-1)
                scores = (all_scores * weights).sum(0) / weights.sum(0).clamp(min=1)
                seen = all_seen.sum(0) > 0
            if not seen.any():
                return
            thresholds = cat_thresholds(scores[seen], self.class_priors)
        self.thresholds.copy_(thresholds)
        self.thresholds_ready.fill_(True)

    def on_train_epoch_end(self) -> None:
        if self.hparams.threshold_refresh == "epoch":
            self.refresh_thresholds(gather=True)
            self._provisional_thresholds = not bool(self.thresholds_ready)
        self._labeled_scores.clear()
        finite = self.thresholds[torch.isfinite(self.thresholds)]
        if len(finite):
            self.log_dict(
                {
                    "pseudo/threshold_mean": finite.mean(),
                    "pseudo/threshold_min": finite.min(),
                    "pseudo/threshold_max": finite.max(),
                }
            )
        if self._unlabeled_seen is not None and self._unlabeled_seen.any():
            values = self.pseudo_metrics.compute()
            self.log_dict({f"pseudo/{name}": 100 * value for name, value in values.items()})
        self.pseudo_metrics.reset()

    # -- evaluation --------------------------------------------------------------------------
    def evaluation_scores(self, images: Tensor) -> dict[str, Tensor]:
        return {"": torch.sigmoid(self(images)), "_teacher": self.teacher_probs(images)}


def context_groups(class_names: list[str], class_to_context: np.ndarray) -> dict[int, list[str]]:
    """Class names per context, for logging and notebooks."""
    groups: dict[int, list[str]] = {}
    for name, context in zip(class_names, class_to_context.tolist(), strict=True):
        groups.setdefault(int(context), []).append(name)
    return groups
