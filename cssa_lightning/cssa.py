"""``CSSATask``: context-based semantic-aware alignment for semi-supervised multi-label learning.

On top of :class:`~cssa_lightning.multilabel.MultiLabelTask`: label-specific features by
label-query cross-attention, one-to-one semantic alignment, context identification, an EMA
teacher giving pseudo-labels on the weak view, and consistency on the strong view. With the
switches off it is the CAP baseline (the ``cap`` config overlay).
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
from cssa_lightning.losses import (
    absent_push_loss,
    context_loss,
    pair_normalizer,
    semantic_alignment_loss,
)
from cssa_lightning.multilabel import MultiLabelTask, one_cycle_factor
from cssa_lightning.network import Encoded
from cssa_lightning.pseudo_labels import PseudoLabeller, PseudoLabels

log = logging.getLogger(__name__)


class CSSATask(MultiLabelTask):
    """CSSA: labeled + unlabeled training with a CLIP student and an EMA teacher.

    The training step is assembled from named loss terms: :meth:`labeled_losses` (``sup``,
    ``align``, ``ctx``, ``push``) and :meth:`unlabeled_losses` (``cons``, ``align_u``,
    ``ctx_u``, ``push_u``), summed with the weights of :meth:`loss_weights`. After
    ``warmup_epochs`` of supervised-only training the total is
    ``L_sup + w_a (L_align + L_align_u) + lambda_u L_cons + w_c (L_ctx + L_ctx_u)
    + w_p (L_push + L_push_u)``, where ``lambda_u`` ramps linearly to ``consistency_weight``
    over ``rampup_epochs`` (and ``w_a``, ``w_c``, ``w_p`` too with ``ramp_auxiliary``). A
    subclass changes one term by overriding the method that computes it. The teacher's
    pseudo-labels come from :attr:`pseudo_labeller` (thresholds, score memory, refresh).

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        label_specific: Label-specific features by label-query cross-attention; ``False``
            uses the global feature for every label.
        attention_heads: Heads of the label-query cross-attention.
        cross_attention_lr: Peak learning rate of the cross-attention; ``None`` uses
            ``head_lr``.
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
        absent_push_weight: Weight of the absent-label push term (0: off): the feature of each
            absent label (labeled negatives; trusted pseudo-negatives) is pushed below cosine
            ``absent_push_margin`` with the alignment target of its class.
        absent_push_margin: Cosine above which an absent label's feature is pushed.
        use_context: Add the context identification task.
        num_contexts: Contexts ``K`` found by spectral clustering of labeled co-occurrence.
        context_weight: Weight of the context losses.
        context_target: Multi-hot contexts with BCE, or one context per image with CE.
        context_input: Feature the context head reads: global, or the mean label feature.
        context_hidden: Hidden width of the context head.
        context_seed: Seed of the spectral clustering.
        use_consistency: Add the teacher/student consistency loss on unlabeled images.
        consistency_weight: Final weight ``lambda_u`` of the consistency loss.
        consistency_target: What the strong view's scores are trained towards: the teacher's
            hard pseudo-labels (``hard``, thresholded), or its probabilities (``soft``, as
            soft targets of the same ASL/BCE loss); either way multiplied by the reliability
            mask (``reliability_margin``, ``negative_keep``). Soft targets keep the teacher's
            confidence: an entry just over its threshold is not pushed towards 1 as hard as a
            sure one, nor one just under it towards 0, so the student inherits less of the
            thresholding's errors. Alignment and context targets stay hard.
        unlabeled_weighting: How unlabeled terms weigh against labeled ones: each loss is a
            per-batch mean (``batch_mean``), or each unlabeled term is scaled by the ratio of
            unlabeled to labeled images in the step so every image weighs the same
            (``per_image``, as CAP's sums over images).
        warmup_epochs: Epochs of supervised-only training before the other losses start.
        rampup_epochs: Epochs over which ``lambda_u`` grows linearly after the warm-up.
        ramp_auxiliary: Ramp the alignment, context and push weights with the same linear ramp
            as ``lambda_u`` (else they start at full weight when the warm-up ends).
        teacher_restart: Restart the EMA teacher from the student when the warm-up ends, so
            the semi-supervised phase starts from the warmed-up model (as CAP does) rather than
            from an average that still remembers the first steps.
        schedule_restart: Run one OneCycle learning-rate schedule over the warm-up and a new
            one over the semi-supervised epochs (CAP), instead of one over the whole run.
        pseudo_threshold: How thresholds are chosen: class-distribution-aware (CAT), one fixed
            value, or F-beta on labeled teacher scores (MAT).
        fixed_threshold: The threshold of ``pseudo_threshold="fixed"``.
        fbeta: ``beta`` of ``pseudo_threshold="fbeta"``.
        threshold_refresh: Recompute thresholds at each epoch end from the epoch's teacher
            scores, at every step from the latest teacher score of each image seen so far
            (every process records every process's scores), or from one pass of the fixed
            teacher over every unlabeled image (eval view) at the start of each
            semi-supervised epoch (``pass``, CAP).
        pseudo_label_scores: Pseudo-labels from the teacher's scores of the step's weak views
            (``step``), or from the scores of the epoch-start pass (``pass``, CAP; needs
            ``threshold_refresh="pass"``).
        reliability_margin: Mask pseudo-labels whose teacher probability is within this
            distance of the threshold (0 keeps all).
        negative_keep: Fraction of each class's pseudo-negatives used, lowest scores first
            (CAP: 0.998 drops the negatives just under the threshold); 1 uses all.
        ema_decay: Decay of the teacher's exponential moving average.
        **kwargs: Options of :class:`~cssa_lightning.multilabel.MultiLabelTask`.
    """

    evaluated_scores = ("", "_teacher")
    # Recall levels at which the pseudo-labels' precision is logged (``pseudo/precision@R``):
    # methods with different thresholds are compared at the same recall.
    monitored_recalls = (0.4, 0.5, 0.6, 0.7, 0.8)

    def __init__(
        self,
        class_names: list[str],
        label_specific: bool = True,
        attention_heads: int = 8,
        cross_attention_lr: float | None = None,
        use_alignment: bool = True,
        alignment_weight: float = 1.0,
        alignment_temperature: float = 0.07,
        alignment_unlabeled: Literal["all", "confident", "weighted", "none"] = "confident",
        alignment_margin: float = 0.2,
        alignment_target: Literal["text", "prototype", "both"] = "prototype",
        absent_push_weight: float = 0.0,
        absent_push_margin: float = 0.0,
        use_context: bool = True,
        num_contexts: int = 5,
        context_weight: float = 1.0,
        context_target: Literal["multi_hot", "single"] = "multi_hot",
        context_input: Literal["global", "label_mean"] = "global",
        context_hidden: int = 256,
        context_seed: int = 0,
        use_consistency: bool = True,
        consistency_weight: float = 1.0,
        consistency_target: Literal["hard", "soft"] = "hard",
        unlabeled_weighting: Literal["batch_mean", "per_image"] = "batch_mean",
        warmup_epochs: int = 12,
        rampup_epochs: float = 1.0,
        ramp_auxiliary: bool = True,
        teacher_restart: bool = False,
        schedule_restart: bool = False,
        pseudo_threshold: Literal["cat", "fixed", "fbeta"] = "cat",
        fixed_threshold: float = 0.7,
        fbeta: float = 1.0,
        threshold_refresh: Literal["epoch", "step", "pass"] = "epoch",
        pseudo_label_scores: Literal["step", "pass"] = "step",
        reliability_margin: float = 0.0,
        negative_keep: float = 1.0,
        ema_decay: float = 0.999,
        **kwargs: Any,
    ):
        if use_context and num_contexts < 1:
            raise ValueError(f"num_contexts must be >= 1 with use_context, got {num_contexts}")
        if consistency_target not in ("hard", "soft"):
            raise ValueError(
                f"consistency_target must be 'hard' or 'soft', got {consistency_target!r}"
            )
        if pseudo_label_scores == "pass" and threshold_refresh != "pass":
            raise ValueError("pseudo_label_scores='pass' needs threshold_refresh='pass'")
        super().__init__(class_names, **kwargs)
        num_classes = len(class_names)
        self.teacher = AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
        )
        self.teacher.requires_grad_(False)
        self.pseudo_labeller = PseudoLabeller(
            num_classes,
            rule=pseudo_threshold,
            refresh=threshold_refresh,
            fixed_threshold=fixed_threshold,
            fbeta=fbeta,
            reliability_margin=reliability_margin,
            negative_keep=negative_keep,
        )
        # Data-dependent state, filled in on_fit_start and saved in checkpoints.
        self.register_buffer("class_priors", torch.zeros(num_classes))
        self.register_buffer("class_to_context", torch.zeros(num_classes, dtype=torch.long))
        self.pseudo_metrics = MetricCollection(
            {
                # validate_args=False: the checks of the inputs wait for the device each step.
                "precision": MultilabelPrecision(num_classes, average="micro", validate_args=False),
                "recall": MultilabelRecall(num_classes, average="micro", validate_args=False),
                "F1": MultilabelF1Score(num_classes, average="micro", validate_args=False),
            }
        )
        # Hidden labels of the unlabeled images, for monitoring the pseudo-labels only.
        self._hidden_targets: Tensor | None = None

    @property
    def thresholds(self) -> Tensor:
        """``(C,)`` the current pseudo-label thresholds."""
        return self.pseudo_labeller.thresholds

    def network_options(self) -> dict[str, Any]:
        hp = self.hparams
        return dict(
            label_specific=hp.label_specific,
            attention_heads=hp.attention_heads,
            num_contexts=hp.num_contexts if hp.use_context else 0,
            context_hidden=hp.context_hidden,
            context_input=hp.context_input,
        )

    def parameter_lr(self, name: str) -> float:
        lr = self.hparams.cross_attention_lr
        if lr is not None and name.startswith("net.cross_attention."):
            return lr
        return super().parameter_lr(name)

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
        num_unlabeled = len(datamodule.unlabeled_indices)
        self.pseudo_labeller.allocate(num_unlabeled)  # a restored memory is kept
        self._hidden_targets = torch.zeros(num_unlabeled, self.num_classes, device=self.device)

    def compiled_modules(self) -> list[torch.nn.Module]:
        return [*super().compiled_modules(), self.teacher.module]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # the class-name check
        # Checkpoints written before the pseudo-labeller module kept its thresholds on the task.
        state = checkpoint.get("state_dict", {})
        for old, new in (("thresholds", "thresholds"), ("thresholds_ready", "ready")):
            if old in state and f"pseudo_labeller.{new}" not in state:
                state[f"pseudo_labeller.{new}"] = state.pop(old)

    # -- schedule ----------------------------------------------------------------------------
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

    def loss_weights(
        self, batch_idx: int, num_labeled: int, num_unlabeled: int
    ) -> dict[str, float]:
        """The weight of every named loss term at this step."""
        hp = self.hparams
        ramp = self.ramp(batch_idx) if hp.ramp_auxiliary else 1.0
        align, ctx, push = (
            hp.alignment_weight * ramp,
            hp.context_weight * ramp,
            hp.absent_push_weight * ramp,
        )
        unlabeled = 1.0
        if hp.unlabeled_weighting == "per_image" and num_labeled > 0:
            unlabeled = num_unlabeled / num_labeled
        return {
            "sup": 1.0,
            "align": align,
            "ctx": ctx,
            "push": push,
            "cons": self.unsupervised_weight(batch_idx) * unlabeled,
            "align_u": align * unlabeled,
            "ctx_u": ctx * unlabeled,
            "push_u": push * unlabeled,
        }

    def in_warmup(self) -> bool:
        return self.current_epoch < self.hparams.warmup_epochs

    def learning_rate_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        hp = self.hparams
        epochs = self.trainer.max_epochs
        if not hp.schedule_restart or hp.warmup_epochs <= 0 or not epochs or epochs < 1:
            return super().learning_rate_scheduler(optimizer, total_steps)
        warm = min(round(total_steps * hp.warmup_epochs / epochs), total_steps - 1)
        if warm < 1:
            return super().learning_rate_scheduler(optimizer, total_steps)

        def factor(step: int) -> float:
            if step < warm:
                return one_cycle_factor(step, warm, hp.pct_start)
            return one_cycle_factor(step - warm, total_steps - warm, hp.pct_start)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # -- teacher and pseudo-labels (override one to change what the losses receive) -----------
    def teacher_probs(self, images: Tensor) -> Tensor:
        """Teacher probabilities on (weak-view) images."""
        self.teacher.eval()
        with torch.inference_mode():  # no autograd bookkeeping at all for the teacher
            probs = torch.sigmoid(self.teacher(images).logits.float())
        # Cloned outside inference mode into a normal tensor: the losses use the probabilities
        # as weights, and inference tensors cannot be saved for a backward pass.
        return probs.clone()

    def pseudo_labels(self, probs: Tensor) -> PseudoLabels:
        """Hard pseudo-labels and the mask of usable entries. The alignment positives, the
        context targets and (by default) the consistency targets come from these."""
        return self.pseudo_labeller(probs)

    def consistency_targets(self, probs: Tensor, pseudo: PseudoLabels) -> tuple[Tensor, Tensor]:
        """Targets and mask of the consistency loss: the hard pseudo-labels, or the teacher's
        probabilities with ``consistency_target="soft"``; the mask is the pseudo-labels' in
        both cases (the alignment and context inputs do not change)."""
        if self.hparams.get("consistency_target", "hard") == "soft":
            return probs, pseudo.mask
        return pseudo.labels, pseudo.mask

    def alignment_positives(self, probs: Tensor, pseudo: PseudoLabels) -> Tensor:
        """Weights of the unlabeled ``(image, label)`` pairs the alignment loss pulls."""
        hp = self.hparams
        labels, mask = pseudo
        if hp.alignment_unlabeled == "confident":
            return labels * mask * (probs >= self.thresholds + hp.alignment_margin)
        if hp.alignment_unlabeled == "weighted":
            return labels * mask * probs
        if hp.alignment_unlabeled == "none":
            return torch.zeros_like(labels)
        return labels * mask

    # -- loss terms --------------------------------------------------------------------------
    def alignment_targets(self) -> list[Tensor]:
        """``(C, D)`` features the label features are aligned with (``alignment_target``)."""
        hp = self.hparams
        targets = []
        if hp.alignment_target in ("text", "both"):
            targets.append(self.net.class_text_features())
        if hp.alignment_target in ("prototype", "both"):
            targets.append(self.net.alignment.prototypes)
        return targets

    def alignment_loss(self, encoded: Encoded, positives: Tensor) -> Tensor:
        """One-to-one alignment of each positive label's feature with its class text and/or
        its classifier prototype (``alignment_target``)."""
        temperature = self.hparams.alignment_temperature
        normalizer = self.pair_normalizer(positives)
        losses = [
            semantic_alignment_loss(
                encoded.label_features, target, positives, temperature, normalizer
            )
            for target in self.alignment_targets()
        ]
        return sum(losses) / len(losses)

    def absent_push_loss(self, encoded: Encoded, negatives: Tensor) -> Tensor:
        """Push absent labels' features away from their class's alignment target."""
        margin = self.hparams.absent_push_margin
        normalizer = self.pair_normalizer(negatives)
        losses = [
            absent_push_loss(encoded.label_features, target, negatives, margin, normalizer)
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

    def step_gather(self) -> Any:
        """``all_gather`` when several processes train (their step's records are shared), else
        ``None``."""
        trainer = self._trainer
        return self.all_gather if trainer is not None and trainer.world_size > 1 else None

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

    def labeled_losses(self, student: Encoded, targets: Tensor) -> dict[str, Tensor]:
        """Named loss terms of the labeled images (only ``sup`` during the warm-up)."""
        hp = self.hparams
        losses = {"sup": self.supervised_loss(student.logits, targets)}
        if self.in_warmup():
            return losses
        if hp.use_alignment:
            losses["align"] = self.alignment_loss(student, targets)
            if hp.absent_push_weight > 0:
                losses["push"] = self.absent_push_loss(student, 1 - targets)
        if hp.use_context:
            losses["ctx"] = self.context_loss(student, targets)
        return losses

    def unlabeled_losses(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> dict[str, Tensor]:
        """Named loss terms of the unlabeled images' strong views against the teacher."""
        hp = self.hparams
        losses = {}
        if hp.use_consistency:
            targets, mask = self.consistency_targets(probs, pseudo)
            losses["cons"] = self.consistency_loss(strong.logits, targets, mask)
        if hp.use_alignment and hp.alignment_unlabeled != "none":
            losses["align_u"] = self.alignment_loss(strong, self.alignment_positives(probs, pseudo))
        if hp.use_alignment and hp.absent_push_weight > 0:
            losses["push_u"] = self.absent_push_loss(strong, (1 - pseudo.labels) * pseudo.mask)
        if hp.use_context:
            losses["ctx_u"] = self.context_loss(strong, pseudo.labels)
        return losses

    def loss_names(self) -> list[str]:
        """The loss terms this configuration uses (each logged from the first step, as 0 while
        it is not active, so every curve spans the run)."""
        hp = self.hparams
        names = ["sup"]
        if hp.use_alignment:
            names += ["align"] + (["align_u"] if hp.alignment_unlabeled != "none" else [])
            names += ["push", "push_u"] if hp.absent_push_weight > 0 else []
        if hp.use_context:
            names += ["ctx", "ctx_u"]
        if hp.use_consistency:
            names.append("cons")
        return names

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The weighted sum of the named loss terms. Returns ``{"loss"}`` plus, when the batch
        has unlabeled images, the teacher's ``teacher_probs`` and ``pseudo_labels`` of this step
        (callbacks read them in ``on_train_batch_end``, after the teacher has moved on)."""
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        student = self.encode(labeled["image"])
        losses = self.labeled_losses(student, labeled["target"])
        if self.hparams.pseudo_threshold == "fbeta":
            self.pseudo_labeller.record_labeled(
                self.teacher_probs(labeled["image"]), labeled["target"], self.step_gather()
            )

        num_unlabeled, mask_ratio, outputs = 0, None, {}
        if unlabeled is not None:
            probs = self.unlabeled_teacher_probs(unlabeled)
            pseudo = self.pseudo_labels(probs)
            # Monitoring only: the hidden labels never reach a loss.
            # (integer predictions: float ones are range-checked, which waits for the device)
            self.pseudo_metrics.update(pseudo.labels.long(), unlabeled["target"].long())
            self.remember_hidden_targets(unlabeled["index"], unlabeled["target"])
            mask_ratio = pseudo.mask.mean()
            outputs = {"teacher_probs": probs.detach(), "pseudo_labels": pseudo.labels.detach()}
            if not self.in_warmup() and self.uses_unlabeled:
                strong = self.encode(unlabeled["image_strong"])
                losses.update(self.unlabeled_losses(strong, probs, pseudo))
                num_unlabeled = unlabeled["image_strong"].shape[0]

        size = labeled["image"].shape[0]
        weights = self.loss_weights(batch_idx, size, num_unlabeled)
        total = sum(weights[name] * value for name, value in losses.items())
        zero = torch.zeros((), device=self.device)
        logged = {name: zero for name in self.loss_names()} | losses
        log_values = {f"train/loss_{name}": value for name, value in logged.items()}
        log_values["train/loss"] = total
        if mask_ratio is not None:
            log_values["train/mask_ratio"] = mask_ratio
        self.log_dict(log_values, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lambda_u", weights["cons"], on_step=True, on_epoch=False, batch_size=size)
        return {"loss": total, **outputs}

    def unlabeled_teacher_probs(self, unlabeled: dict[str, Tensor]) -> Tensor:
        """Teacher probabilities of the step's unlabeled images: scored now on the weak view,
        or read from the epoch-start pass (``pseudo_label_scores="pass"``). Records them and
        refreshes the thresholds as ``threshold_refresh`` asks."""
        labeller = self.pseudo_labeller
        passed = labeller.refresh_mode == "pass" and not self.in_warmup()
        if passed and self.hparams.pseudo_label_scores == "pass":
            return labeller.recorded(unlabeled["index"])
        probs = self.teacher_probs(unlabeled["image_weak"])
        if not passed:  # the pass's scores stay as they are for the epoch
            labeller.record(unlabeled["index"], probs, self.step_gather())
            labeller.step_refresh(self.class_priors)
        return probs

    def remember_hidden_targets(self, index: Tensor, targets: Tensor) -> None:
        """Keep the unlabeled images' hidden labels (every process's) for monitoring."""
        gather = self.step_gather()
        if gather is not None:
            index = gather(index).reshape(-1)
            targets = gather(targets).reshape(-1, self.num_classes)
        self._hidden_targets[index] = targets.float()

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if hp.teacher_restart and hp.warmup_epochs > 0 and self.current_epoch == hp.warmup_epochs:
            self.teacher.module.load_state_dict(self.net.state_dict())
            log.info("teacher restarted from the student at epoch %d", self.current_epoch)
        if hp.threshold_refresh == "pass" and self.current_epoch >= hp.warmup_epochs:
            self.teacher_pass()

    @torch.no_grad()
    def teacher_pass(self) -> None:
        """Score every unlabeled image (eval view) with the current, now fixed, teacher and
        recompute the thresholds from those scores (CAP). Each process scores every image, so
        no gathering is needed."""
        loader = self.trainer.datamodule.unlabeled_eval_dataloader()
        for batch in loader:
            probs = self.teacher_probs(batch["image"].to(self.device))
            self.pseudo_labeller.record(batch["index"].to(self.device), probs)
        self.pseudo_labeller.refresh_from_pass(self.class_priors)
        log.info("teacher pass over %d unlabeled images", len(loader.dataset))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The teacher follows every optimizer step, before any callback (e.g. a checkpoint)
        # sees the step's end.
        super().optimizer_step(*args, **kwargs)
        self.teacher.update_parameters(self.net)

    def on_train_epoch_end(self) -> None:
        self.pseudo_labeller.end_epoch(self.class_priors)
        finite = self.thresholds[torch.isfinite(self.thresholds)]
        if len(finite):
            self.log_dict(
                {
                    "pseudo/threshold_mean": finite.mean(),
                    "pseudo/threshold_min": finite.min(),
                    "pseudo/threshold_max": finite.max(),
                }
            )
        seen = self.pseudo_labeller.seen
        if len(seen) and seen.any():
            values = self.pseudo_metrics.compute()
            self.log_dict({f"pseudo/{name}": 100 * value for name, value in values.items()})
            self.log_dict(self.pseudo_label_quality())
        self.pseudo_metrics.reset()

    @torch.no_grad()
    def pseudo_label_quality(self) -> dict[str, Tensor]:
        """Threshold-free quality of the remembered teacher scores against the hidden labels
        (monitoring only): precision at fixed recalls, in %."""
        seen = self.pseudo_labeller.seen
        scores = self.pseudo_labeller.scores[seen].flatten()
        hidden = self._hidden_targets[seen].flatten()
        order = scores.argsort(descending=True)
        hits = hidden[order].cumsum(0)
        positives = hidden.sum().clamp(min=1)
        recall = hits / positives
        precision = hits / torch.arange(1, len(hits) + 1, device=hits.device)
        values = {}
        for level in self.monitored_recalls:
            reached = (recall >= level).nonzero()
            value = precision[reached[0, 0]] if len(reached) else precision.new_tensor(0.0)
            values[f"pseudo/precision@{round(100 * level)}"] = 100 * value
        return values

    # -- evaluation --------------------------------------------------------------------------
    def evaluation_scores(self, images: Tensor) -> dict[str, Tensor]:
        return {"": torch.sigmoid(self(images)), "_teacher": self.teacher_probs(images)}


def context_groups(class_names: list[str], class_to_context: np.ndarray) -> dict[int, list[str]]:
    """Class names per context, for logging and notebooks."""
    groups: dict[int, list[str]] = {}
    for name, context in zip(class_names, class_to_context.tolist(), strict=True):
        groups.setdefault(int(context), []).append(name)
    return groups
