"""``MeanTeacherTask``: semi-supervised multi-label training with an EMA teacher.

On top of :class:`~cssa_lightning.methods.multilabel.MultiLabelTask`: an EMA copy of the network (the
teacher) scores the weak view of each unlabeled image, a
:class:`~cssa_lightning.methods.pseudo_labels.PseudoLabeller` turns the scores into pseudo-labels, and
the student's strong view is trained towards them (the consistency term) after a supervised
warm-up. The loss is a table of named terms (:class:`~cssa_lightning.methods.loss_terms.LossTerm`), so
a method built on it (CSSA: :mod:`cssa_lightning.methods.cssa`) adds rows. Its configurations:

- CAP (NeurIPS 2023): this task as it is, e.g. with the ``cap`` overlay's options;
- supervised+EMA (a labeled-only control): ``use_consistency: false`` and the data module's
  ``load_unlabeled: false`` (the ``supervised_ema`` overlay).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
from lightning.pytorch import Callback
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cssa_lightning.methods.loss_terms import LossTerm, Stream, check_table, option
from cssa_lightning.methods.metrics import average_precision
from cssa_lightning.methods.monitoring import PseudoLabelMonitor
from cssa_lightning.methods.multilabel import MultiLabelTask, one_cycle_factor
from cssa_lightning.methods.neighbours import NeighbourVote
from cssa_lightning.methods.options import (
    FLAT_NAMES,
    PSEUDO_DEFAULTS,
    PseudoLabelOptions,
    as_dict,
    lookup,
    move_flat_names,
    take_group,
)
from cssa_lightning.methods.pseudo_labels import PseudoLabeller, PseudoLabels
from cssa_lightning.networks.network import Encoded

log = logging.getLogger(__name__)


class MeanTeacherTask(MultiLabelTask):
    """Labeled + unlabeled training with a CLIP student and an EMA teacher (CAP).

    The training step is the weighted sum of the rows of :attr:`loss_terms` that the
    configuration enables: the supervised term ``sup`` on labeled images and the consistency
    term ``cons`` between the student's strong views and the teacher's pseudo-labels of the
    weak views of unlabeled images, ``L_sup + lambda_u L_cons``, where ``lambda_u`` is 0
    during ``warmup_epochs`` of supervised-only training, then ramps linearly to
    ``consistency_weight`` over ``rampup_epochs``. A subclass adds a term with a row and the
    method that computes it, or changes one by overriding that method; the teacher's
    pseudo-labels come from :attr:`pseudo_labeller` (thresholds, score memory, refresh).

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        use_consistency: Add the teacher/student consistency loss on unlabeled images
            (``False`` with ``load_unlabeled: false`` is the supervised+EMA control: the EMA
            teacher without any unlabeled image).
        consistency_weight: Final weight ``lambda_u`` of the consistency loss.
        consistency_target: What the strong view's scores are trained towards: the teacher's
            hard pseudo-labels (``hard``, thresholded), or its probabilities (``soft``, as
            soft targets of the same ASL/BCE loss); either way multiplied by the reliability
            mask (``pseudo.reliability_margin``, ``pseudo.negative_keep``). Soft targets keep the teacher's
            confidence: an entry just over its threshold is not pushed towards 1 as hard as a
            sure one, nor one just under it towards 0, so the student inherits less of the
            thresholding's errors. The other terms' pseudo-labels stay hard.
        unlabeled_weighting: How unlabeled terms weigh against labeled ones: each loss is a
            per-batch mean (``batch_mean``), or each unlabeled term is scaled by the ratio of
            unlabeled to labeled images in the step so every image weighs the same
            (``per_image``, as CAP's sums over images).
        warmup_epochs: Epochs of supervised-only training before the other losses start: the
            teacher's pseudo-labels are worth learning from only once it has seen the labels.
        rampup_epochs: Epochs over which ``lambda_u`` grows linearly after the warm-up, so
            the first, noisiest pseudo-labels weigh little.
        ramp_auxiliary: Ramp the weights of the auxiliary terms (rows with
            ``ramp="auxiliary"``, e.g. CSSA's alignment, context and push) with the same
            linear ramp as ``lambda_u`` (else they start at full weight when the warm-up ends).
        teacher_restart: Restart the EMA teacher from the student when the warm-up ends, so
            the semi-supervised phase starts from the warmed-up model (as CAP does) rather than
            from an average that still remembers the first steps.
        schedule_restart: Run one OneCycle learning-rate schedule over the warm-up and a new
            one over the semi-supervised epochs (CAP), instead of one over the whole run.
        pseudo: How the teacher's scores become pseudo-labels: thresholds, their refresh,
            the reliability mask, the score memory and the prior blend
            (:class:`~cssa_lightning.methods.options.PseudoLabelOptions`).
        ema_decay: Decay of the teacher's exponential moving average: closer to 1, a slower
            and smoother teacher.
        **kwargs: Options of :class:`~cssa_lightning.methods.multilabel.MultiLabelTask`.
    """

    evaluated_scores = ("", "_teacher")
    # The loss terms, in the order they are computed and summed; a subclass adds rows.
    loss_terms: tuple[LossTerm, ...] = (
        LossTerm("sup", "labeled", "supervised_term", warmup=True),
        LossTerm(
            "cons",
            "unlabeled",
            "consistency_term",
            weight="consistency_weight",
            ramp="always",
            enabled=option("use_consistency"),
        ),
    )

    def __init__(
        self,
        class_names: list[str],
        use_consistency: bool = True,
        consistency_weight: float = 1.0,
        consistency_target: Literal["hard", "soft"] = "hard",
        unlabeled_weighting: Literal["batch_mean", "per_image"] = "batch_mean",
        warmup_epochs: int = 12,
        rampup_epochs: float = 1.0,
        ramp_auxiliary: bool = True,
        teacher_restart: bool = False,
        schedule_restart: bool = False,
        ema_decay: float = 0.999,
        pseudo: PseudoLabelOptions = PSEUDO_DEFAULTS,
        **kwargs: Any,
    ):
        if consistency_target not in ("hard", "soft"):
            raise ValueError(
                f"consistency_target must be 'hard' or 'soft', got {consistency_target!r}"
            )
        move_flat_names(kwargs, ("pseudo",))
        pseudo = take_group(PseudoLabelOptions, "pseudo", pseudo, kwargs, PSEUDO_DEFAULTS)
        self.pseudo_options = pseudo
        super().__init__(class_names, **kwargs)
        # The record of the options is plain data (weights-only checkpoints), complete; the
        # typed groups are what the code reads. The constructors' frames that the record is
        # collected from may have held partial groups or flat names.
        for name, group in self.option_groups().items():
            self.hparams[name] = as_dict(group)
        for name in FLAT_NAMES:
            self.hparams.pop(name, None)
        self.check_loss_terms()
        num_classes = len(class_names)
        self.teacher = AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
        )
        self.teacher.requires_grad_(False)
        # The frozen start network of pseudo.prior_weight (set from the student in
        # on_fit_start; a resumed fit restores it from the checkpoint).
        self.prior = None
        if pseudo.prior_weight > 0:
            self.prior = copy.deepcopy(self.net).requires_grad_(False)
            # Its weight per class (pseudo.prior_weighting), saved in checkpoints.
            self.register_buffer(
                "prior_class_weights", torch.full((len(class_names),), pseudo.prior_weight)
            )
        # The labeled images' votes of pseudo.prior_source, and 1 for the classes whose prior
        # probabilities they are (every class with "neighbours"; chosen at fit start with
        # "best"); both filled in on_fit_start and saved in checkpoints.
        self.prior_votes = None
        if pseudo.prior_source != "start_network":
            self.prior_votes = NeighbourVote(
                num_classes, pseudo.neighbours, pseudo.neighbour_temperature
            )
            self.register_buffer("classes_voted", torch.ones(num_classes))
        if pseudo.min_prior_skill > 0:
            # 1 for the classes the unlabeled losses may use (pseudo.min_prior_skill), set in
            # on_fit_start and saved in checkpoints.
            self.register_buffer("unlabeled_classes", torch.ones(num_classes))
        self.pseudo_labeller = PseudoLabeller(
            num_classes,
            rule=pseudo.threshold,
            refresh=pseudo.refresh,
            fixed_threshold=pseudo.fixed_threshold,
            fbeta=pseudo.fbeta,
            reliability_margin=pseudo.reliability_margin,
            negative_keep=pseudo.negative_keep,
            memory_size=pseudo.memory,
        )
        # Data-dependent state, filled in on_fit_start and saved in checkpoints.
        self.register_buffer("class_priors", torch.zeros(num_classes))

    def option_groups(self) -> dict[str, Any]:
        """The task's typed option groups by name (set before ``__init__`` calls the base
        class; a subclass adds its own)."""
        return {"pseudo": self.pseudo_options}

    @property
    def thresholds(self) -> Tensor:
        """``(C,)`` the current pseudo-label thresholds."""
        return self.pseudo_labeller.thresholds

    # -- the loss table ----------------------------------------------------------------------
    def modules_idle_in_warmup(self) -> list[str]:
        """Submodules that no loss term reaches during the warm-up. Plain ``ddp`` rejects a
        step in which a parameter gets no gradient, so ``cssa fit`` runs such a task with
        ``ddp_find_unused_parameters_true`` instead."""
        return []

    def check_loss_terms(self) -> None:
        """Refuse a table with a repeated name, a missing method or an unknown weight option.

        Raises:
            ValueError: Naming the faulty row.
        """
        check_table(self.loss_terms)
        for term in self.loss_terms:
            if not callable(getattr(self, term.method, None)):
                raise ValueError(f"loss term {term.name!r}: no method {term.method!r}")
            if isinstance(term.weight, str) and lookup(self.hparams, term.weight) is None:
                raise ValueError(f"loss term {term.name!r}: no option {term.weight!r}")

    def enabled_terms(self, stream: Stream | None = None) -> list[LossTerm]:
        """The rows of :attr:`loss_terms` this configuration uses (of one ``stream``)."""
        return [
            term
            for term in self.loss_terms
            if term.enabled(self.hparams) and stream in (None, term.stream)
        ]

    def loss_names(self) -> list[str]:
        """The loss terms this configuration uses (each logged from the first step, as 0 while
        it is not active, so every curve spans the run)."""
        return [term.name for term in self.enabled_terms()]

    @property
    def uses_unlabeled(self) -> bool:
        """Whether a loss term reads the unlabeled images (their strong views are encoded
        only then; the teacher scores them for monitoring either way)."""
        return bool(self.enabled_terms("unlabeled"))

    def loss_weights(
        self, batch_idx: int, num_labeled: int, num_unlabeled: int
    ) -> dict[str, float]:
        """The weight of every row of :attr:`loss_terms` at this step: its option, times the
        ramp if it ramps, times ``num_unlabeled / num_labeled`` for an unlabeled term with
        ``unlabeled_weighting="per_image"``."""
        hp = self.hparams
        ramp = self.ramp(batch_idx)
        ramps = {"none": 1.0, "always": ramp, "auxiliary": ramp if hp.ramp_auxiliary else 1.0}
        unlabeled = 1.0
        if hp.unlabeled_weighting == "per_image" and num_labeled > 0:
            unlabeled = num_unlabeled / num_labeled
        weights = {}
        for term in self.loss_terms:
            weight = term.base_weight(hp) * ramps[term.ramp_of(hp)]
            weights[term.name] = weight * unlabeled if term.stream == "unlabeled" else weight
        return weights

    def labeled_losses(self, student: Encoded, targets: Tensor) -> dict[str, Tensor]:
        """The labeled rows' losses (during the warm-up only those with ``warmup``)."""
        warm = self.in_warmup()
        return {
            term.name: getattr(self, term.method)(student, targets)
            for term in self.enabled_terms("labeled")
            if not warm or term.in_warmup(self.hparams)
        }

    def unlabeled_losses(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> dict[str, Tensor]:
        """The unlabeled rows' losses: the strong views' encoding against the teacher (the
        training step computes them after the warm-up only)."""
        return {
            term.name: getattr(self, term.method)(strong, probs, pseudo)
            for term in self.enabled_terms("unlabeled")
        }

    # -- the terms ---------------------------------------------------------------------------
    def supervised_term(self, student: Encoded, targets: Tensor) -> Tensor:
        """``sup``: the supervised loss of the labeled images."""
        return self.supervised_loss(student.logits, targets)

    def consistency_term(self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels) -> Tensor:
        """``cons``: the strong views' scores against :meth:`consistency_targets`."""
        targets, mask = self.consistency_targets(probs, pseudo)
        return self.consistency_loss(strong.logits, targets, mask)

    def consistency_loss(self, strong_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """The supervised loss between strong-view student scores and teacher pseudo-labels."""
        return self.supervised_loss(strong_logits, labels, mask)

    # -- teacher and pseudo-labels (override one to change what the losses receive) -----------
    def teacher_probs(self, images: Tensor) -> Tensor:
        """Teacher probabilities on (weak-view) images."""
        return frozen_probs(self.teacher, images)

    def pseudo_label_probs(self, images: Tensor) -> Tensor:
        """The probabilities pseudo-labels are made from: the teacher's, blended with the
        frozen start network's by ``pseudo.prior_weight``."""
        probs = self.teacher_probs(images)
        if self.prior is not None:
            weight = self.prior_class_weights
            probs = (1.0 - weight) * probs + weight * self.prior_probs(images)
        return probs

    def prior_probs(self, images: Tensor) -> Tensor:
        """The prior's probabilities (``pseudo.prior_source``): the frozen start network's, or
        per class the labeled images' votes from its global image features."""
        probs, features = frozen_outputs(self.prior, images)
        if self.prior_votes is None:
            return probs
        voted = self.classes_voted
        return voted * self.prior_votes(features) + (1.0 - voted) * probs

    def pseudo_labels(self, probs: Tensor) -> PseudoLabels:
        """Hard pseudo-labels and the mask of usable entries (without the classes that
        ``pseudo.min_prior_skill`` leaves out). The consistency targets (by default) and the
        other unlabeled terms' labels come from these."""
        pseudo = self.pseudo_labeller(probs)
        if self.pseudo_options.min_prior_skill > 0:
            pseudo = PseudoLabels(pseudo.labels, pseudo.mask * self.unlabeled_classes)
        return pseudo

    def consistency_targets(self, probs: Tensor, pseudo: PseudoLabels) -> tuple[Tensor, Tensor]:
        """Targets and mask of the consistency loss: the hard pseudo-labels, or the teacher's
        probabilities with ``consistency_target="soft"``; the mask is the pseudo-labels' in
        both cases (the other terms' inputs do not change)."""
        if self.hparams.get("consistency_target", "hard") == "soft":
            return probs, pseudo.mask
        return pseudo.labels, pseudo.mask

    def step_gather(self) -> Any:
        """``all_gather`` when several processes train (their step's records are shared), else
        ``None``."""
        trainer = self._trainer
        return self.all_gather if trainer is not None and trainer.world_size > 1 else None

    # -- data-dependent state ----------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = self.trainer.datamodule
        self.learn_label_statistics(torch.as_tensor(datamodule.labeled_targets()))
        if int(self.teacher.n_averaged) == 0:
            # What the start network knows first (it may set network buffers), then the
            # teacher (and the prior) from the (bias-calibrated) student, not from __init__'s
            # copy.
            self.set_class_trust()
            self.teacher.module.load_state_dict(self.net.state_dict())
            if self.prior is not None:
                self.prior.load_state_dict(self.net.state_dict())
        if (
            getattr(datamodule, "streams_unlabeled", False)
            and self.pseudo_labeller.memory_size is None
        ):
            raise ValueError(
                "data.unlabeled_source streams the unlabeled images: keep the latest teacher "
                "scores instead of one row per image with --model.pseudo.memory W (e.g. 10000)"
            )
        num_unlabeled = getattr(datamodule, "num_unlabeled", None)
        if num_unlabeled is None:  # a user's data module with the split's indices only
            num_unlabeled = len(datamodule.unlabeled_indices)
        self.pseudo_labeller.allocate(num_unlabeled)  # a restored memory is kept

    def uses_start_skill(self) -> bool:
        """Whether an option needs :meth:`start_pass` (a subclass adds its own)."""
        options = self.pseudo_options
        weigh = self.prior is not None and options.prior_weighting == "labeled_ap"
        return weigh or options.min_prior_skill > 0 or self.prior_votes is not None

    def set_class_trust(self) -> None:
        """From the start network's skill on the labeled images (one pass, only when an
        option needs it, :meth:`uses_start_skill`): what :meth:`trust_classes` sets. With
        the labeled images' votes (``pseudo.prior_source``) the same pass stores their
        features, and the skill is the prior's chosen source's."""
        if not self.uses_start_skill():
            return
        probs, features, targets = self.start_pass()
        skill = prior_skill(probs, targets)
        if self.prior_votes is not None:
            skill = self.fit_prior_votes(features, targets, skill)
        self.trust_classes(skill.to(self.device))

    def fit_prior_votes(self, features: Tensor, targets: Tensor, skill: Tensor) -> Tensor:
        """Store the labeled images as voters and choose, per class, the prior's source
        (``pseudo.prior_source``) from the votes' leave-one-out skill against the start
        network's ``skill``. Returns the chosen source's ``(C,)`` skill."""
        self.prior_votes.fit(features, targets)
        vote_skill = prior_skill(self.prior_votes.leave_one_out().cpu(), targets)
        if self.pseudo_options.prior_source == "neighbours":
            voted = torch.ones_like(skill)
        else:  # "best"
            voted = (vote_skill > skill).float()
        self.classes_voted.copy_(voted)
        log.info(
            "prior from the labeled images' votes for %d of %d classes (their skill %.3f, the "
            "start network's %.3f, on average over the classes)",
            int(voted.sum()),
            len(voted),
            float(vote_skill.mean()),
            float(skill.mean()),
        )
        return voted * vote_skill + (1.0 - voted) * skill

    def trust_classes(self, skill: Tensor) -> None:
        """From the ``(C,)`` start skill: the prior's weight per class
        (``pseudo.prior_weighting="labeled_ap"``) and the classes the unlabeled losses may use
        (``pseudo.min_prior_skill``). A subclass sets its own per-class state too."""
        options = self.pseudo_options
        if self.prior is not None and options.prior_weighting == "labeled_ap":
            self.prior_class_weights.copy_(options.prior_weight * skill)
            log.info(
                "prior weight per class from its labeled AP: mean %.3f, %d of %d classes at 0",
                float(self.prior_class_weights.mean()),
                int((skill == 0).sum()),
                len(skill),
            )
        if options.min_prior_skill > 0:
            self.unlabeled_classes.copy_((skill >= options.min_prior_skill).float())
            log.info(
                "unlabeled losses on %d of %d classes (start skill >= %g)",
                int(self.unlabeled_classes.sum()),
                len(skill),
                options.min_prior_skill,
            )

    @torch.no_grad()
    def start_pass(self) -> tuple[Tensor, Tensor, Tensor]:
        """The network as the fit starts (the student before any step: the prior) on the
        labeled images: ``(N, C)`` probabilities, ``(N, D)`` global features and ``(N, C)``
        labels, on the CPU. Every process runs the same pass."""
        probs, features, targets = [], [], []
        for batch in self.trainer.datamodule.labeled_eval_dataloader():
            batch_probs, batch_features = frozen_outputs(self.net, batch["image"].to(self.device))
            probs.append(batch_probs.cpu())
            features.append(batch_features.cpu())
            targets.append(batch["target"].cpu())
        return torch.cat(probs), torch.cat(features), torch.cat(targets)

    def task_callbacks(self) -> list[Callback]:
        """The guards, and the pseudo-label quality against the hidden labels
        (:class:`~cssa_lightning.methods.monitoring.PseudoLabelMonitor`, monitoring only)."""
        return [*super().task_callbacks(), PseudoLabelMonitor()]

    def learn_label_statistics(self, labeled: Tensor) -> None:
        """What the task takes from the labeled split's ``(N, C)`` labels when a fit starts:
        the class priors of the CAT thresholds (a subclass adds its own)."""
        self.class_priors.copy_(labeled.mean(0))

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

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The weighted sum of the named loss terms. Returns ``{"loss"}`` plus, when the batch
        has unlabeled images, the teacher's ``teacher_probs`` and ``pseudo_labels`` of this step
        (callbacks read them in ``on_train_batch_end``, after the teacher has moved on)."""
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        student = self.encode(labeled["image"])
        losses = self.labeled_losses(student, labeled["target"])
        if self.pseudo_labeller.uses_labeled_scores:
            self.pseudo_labeller.record_labeled(
                self.pseudo_label_probs(labeled["image"]), labeled["target"], self.step_gather()
            )

        num_unlabeled, mask_ratio, outputs = 0, None, {}
        if unlabeled is not None:
            probs = self.unlabeled_teacher_probs(unlabeled)
            pseudo = self.pseudo_labels(probs)
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
        or read from the epoch-start pass (``pseudo.scores="pass"``). Records them and
        refreshes the thresholds as ``pseudo.refresh`` asks."""
        labeller = self.pseudo_labeller
        passed = labeller.refresh_mode == "pass" and not self.in_warmup()
        if passed and self.pseudo_options.scores == "pass":
            return labeller.recorded(unlabeled["index"])
        probs = self.pseudo_label_probs(unlabeled["image_weak"])
        if not passed:  # the pass's scores stay as they are for the epoch
            labeller.record(unlabeled["index"], probs, self.step_gather())
            labeller.step_refresh(self.class_priors)
        return probs

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if hp.teacher_restart and hp.warmup_epochs > 0 and self.current_epoch == hp.warmup_epochs:
            self.teacher.module.load_state_dict(self.net.state_dict())
            log.info("teacher restarted from the student at epoch %d", self.current_epoch)
        if self.pseudo_options.refresh == "pass" and self.current_epoch >= hp.warmup_epochs:
            self.teacher_pass()

    @torch.no_grad()
    def teacher_pass(self) -> None:
        """Score every unlabeled image (eval view) with the current, now fixed, teacher and
        recompute the thresholds from those scores (CAP). Each process scores every image, so
        no gathering is needed."""
        loader = self.trainer.datamodule.unlabeled_eval_dataloader()
        for batch in loader:
            probs = self.pseudo_label_probs(batch["image"].to(self.device))
            self.pseudo_labeller.record(batch["index"].to(self.device), probs)
        self.pseudo_labeller.refresh_from_pass(self.class_priors)
        log.info("teacher pass over %d unlabeled images", len(loader.dataset))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The teacher follows every optimizer step, before any callback (e.g. a checkpoint)
        # sees the step's end.
        super().optimizer_step(*args, **kwargs)
        self.teacher.update_parameters(self.net)

    # -- monitoring --------------------------------------------------------------------------
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

    # -- evaluation --------------------------------------------------------------------------
    def evaluation_scores(self, images: Tensor) -> dict[str, Tensor]:
        return {"": torch.sigmoid(self(images)), "_teacher": self.teacher_probs(images)}


def prior_skill(probs: Tensor, targets: Tensor) -> Tensor:
    """``(C,)`` average precision above chance, ``(AP_k - p_k) / (1 - p_k)`` clipped to
    ``[0, 1]`` (``p_k``: the class's frequency among the images); 0 for a class without a
    positive."""
    frequency = targets.float().mean(0).double()
    ap = average_precision(probs, targets)
    skill = (ap - frequency) / (1.0 - frequency).clamp(min=1e-12)
    return skill.nan_to_num(0.0).clamp(0.0, 1.0).float()


def frozen_probs(model: torch.nn.Module, images: Tensor) -> Tensor:
    """Probabilities of a network that does not train (the teacher, the prior)."""
    return frozen_outputs(model, images)[0]


def frozen_outputs(model: torch.nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Probabilities ``(B, C)`` and global features ``(B, D)`` of a network that does not
    train, in eval mode (its mode is put back after: Lightning warns of modules left in eval
    mode at a fit's start)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():  # no autograd bookkeeping at all
        encoded = model(images)
        probs = torch.sigmoid(encoded.logits.float())
        features = encoded.global_feature.float()
    model.train(was_training)
    # Cloned outside inference mode into normal tensors: the losses use the probabilities
    # as weights, and inference tensors cannot be saved for a backward pass.
    return probs.clone(), features.clone()
