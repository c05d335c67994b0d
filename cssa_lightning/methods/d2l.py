"""``D2LTask``: Dual-Decoupling Learning with Metric-Adaptive Thresholding (D2L, ECCV 2024).

A sibling of CAP on :class:`~cssa_lightning.methods.mean_teacher.MeanTeacherTask`: the same EMA
teacher, weak/strong views and pseudo-labeller, with D2L's two decouplings as rows of the loss
table and two options:

- **Pseudo-label heads apart from the labeled heads** (``decoupled_heads``): the heads that
  score images (and so make the pseudo-labels, the thresholds and every evaluation) learn from
  labels only; a second set of heads, copied from them when the warm-up ends, learns from the
  pseudo-labels only. The pseudo-labels' errors reach the shared image encoder but never the
  heads that produce the next pseudo-labels, which breaks the confirmation loop of self-training.
- **A global and a local branch** (``local_branch``): the label score is the mean of the global
  feature's score and of a local score, the per-class softmax-weighted pool of every patch
  token's score (:func:`~cssa_lightning.networks.heads.softmax_pool`); each branch has its own loss.
  The official code scores a 2x2 grid of crops, each resized to the full input and encoded
  again; with a ViT the patch tokens of the one pass are the local views at no extra encoder
  cost (our adaptation, documented in ``docs/method.md``).
- **MAT**: per-class thresholds maximising F-beta (``beta = 0.5``, precision-leaning) of the
  teacher's scores of the labeled images, refreshed every epoch: ``pseudo.threshold="fbeta"``
  of the mean-teacher task; every unlabeled entry is a hard 0/1 pseudo-label (no mask).

The shipped overlay (``configs/d2l.yaml``) sets D2L's schedule choices on the mean-teacher
options (teacher and learning-rate schedule restarted when the warm-up ends, no ramp, unlabeled
images weighed per image as D2L's summed losses do).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from cssa_lightning.methods.loss_terms import LossTerm, option
from cssa_lightning.methods.mean_teacher import MeanTeacherTask
from cssa_lightning.methods.options import PseudoLabelOptions, move_flat_names, take_group
from cssa_lightning.methods.pseudo_labels import PseudoLabels
from cssa_lightning.networks.heads import AlignmentHead, softmax_pool
from cssa_lightning.networks.network import Encoded

log = logging.getLogger(__name__)

# D2L's pseudo-label options: MAT thresholds (F-beta, beta 0.5) on the labeled teacher scores.
MAT = PseudoLabelOptions(threshold="fbeta", fbeta=0.5)


class D2LTask(MeanTeacherTask):
    """D2L: decoupled pseudo-label heads, a global and a local branch, MAT thresholds.

    The loss table adds to ``sup`` and ``cons`` the local branch's labeled term ``sup_local``
    and unlabeled term ``cons_local``: after the warm-up the total is ``L_sup + L_sup_local +
    lambda_u (L_cons + L_cons_local)``. With ``decoupled_heads`` the ``cons`` terms score the
    strong views with :attr:`pseudo_heads`, which no label, threshold or evaluation reads.

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        decoupled_heads: Learn the pseudo-labels with heads of their own (copied from the
            labeled heads when the warm-up ends); ``False`` trains the labeled heads on them,
            as CAP does.
        local_branch: Add the local branch (patch-token scores, softmax-pooled per class);
            the label score becomes the mean of the global and the local score.
        pseudo: As the mean-teacher task's, with D2L's MAT as the default: ``threshold="fbeta"``
            (per-class F-beta on the teacher's scores of the labeled images) and ``fbeta=0.5``
            as the paper states (the official code's formula, ``(1 + b^2) P R / (b P + R)``,
            picks the thresholds of beta ~0.71 at b = 0.5).
        **kwargs: Options of :class:`~cssa_lightning.methods.mean_teacher.MeanTeacherTask`.
    """

    loss_terms: tuple[LossTerm, ...] = (
        MeanTeacherTask.loss_terms[0],
        LossTerm(
            "sup_local",
            "labeled",
            "local_supervised_term",
            enabled=option("local_branch"),
            warmup=True,
        ),
        MeanTeacherTask.loss_terms[1],
        LossTerm(
            "cons_local",
            "unlabeled",
            "local_consistency_term",
            weight="consistency_weight",
            ramp="always",
            enabled=lambda hp: bool(hp["local_branch"] and hp["use_consistency"]),
        ),
    )

    def __init__(
        self,
        class_names: list[str],
        decoupled_heads: bool = True,
        local_branch: bool = True,
        pseudo: PseudoLabelOptions = MAT,
        **kwargs: Any,
    ):
        move_flat_names(kwargs, ("pseudo",))
        pseudo = take_group(PseudoLabelOptions, "pseudo", pseudo, kwargs, MAT)
        super().__init__(class_names, pseudo=pseudo, **kwargs)
        # The heads that learn from pseudo-labels (never read by the scores): copies of the
        # labeled heads, refreshed from them when the warm-up ends.
        self.pseudo_heads = (
            nn.ModuleDict(
                {"global": self._copy_head(self.net.alignment)}
                | ({"local": self._copy_head(self.net.local_alignment)} if local_branch else {})
            )
            if decoupled_heads
            else None
        )

    @staticmethod
    def _copy_head(head: AlignmentHead) -> AlignmentHead:
        learnable = isinstance(head.prototypes, nn.Parameter)
        copy = AlignmentHead(head.prototypes.detach(), float(head.scale.detach()), learnable)
        copy.load_state_dict(head.state_dict())
        return copy

    def modules_idle_in_warmup(self) -> list[str]:
        # The pseudo-label heads learn from pseudo-labels only, after the warm-up.
        return ["pseudo_heads"] if self.pseudo_heads is not None else []

    def network_options(self) -> dict[str, Any]:
        return {"local_branch": self.hparams.local_branch}

    # -- the terms ---------------------------------------------------------------------------
    def supervised_term(self, student: Encoded, targets: Tensor) -> Tensor:
        """``sup``: the global branch's supervised loss (the label score's when there is no
        local branch)."""
        logits = student.logits if student.global_logits is None else student.global_logits
        return self.supervised_loss(logits, targets)

    def local_supervised_term(self, student: Encoded, targets: Tensor) -> Tensor:
        """``sup_local``: the local branch's supervised loss."""
        return self.supervised_loss(student.local_logits, targets)

    def consistency_term(self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels) -> Tensor:
        """``cons``: the global branch's strong-view scores, from the pseudo-label head when
        the heads are decoupled, against the teacher's pseudo-labels."""
        if self.pseudo_heads is not None:
            logits = self.pseudo_heads["global"](strong.global_feature)
        else:
            logits = strong.logits if strong.global_logits is None else strong.global_logits
        targets, mask = self.consistency_targets(probs, pseudo)
        return self.consistency_loss(logits, targets, mask)

    def local_consistency_term(
        self, strong: Encoded, probs: Tensor, pseudo: PseudoLabels
    ) -> Tensor:
        """``cons_local``: the local branch's strong-view scores against the pseudo-labels."""
        if self.pseudo_heads is not None:
            logits = softmax_pool(self.pseudo_heads["local"].token_scores(strong.patch_tokens))
        else:
            logits = strong.local_logits
        targets, mask = self.consistency_targets(probs, pseudo)
        return self.consistency_loss(logits, targets, mask)

    # -- schedule ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if self.pseudo_heads is not None and self.current_epoch == hp.warmup_epochs:
            # D2L's transfer: the pseudo-label heads start the semi-supervised phase as the
            # warmed-up labeled heads.
            with torch.no_grad():
                self.pseudo_heads["global"].load_state_dict(self.net.alignment.state_dict())
                if "local" in self.pseudo_heads:
                    self.pseudo_heads["local"].load_state_dict(
                        self.net.local_alignment.state_dict()
                    )
            log.info(
                "pseudo-label heads copied from the labeled heads at epoch %d", hp.warmup_epochs
            )
        super().on_train_epoch_start()
