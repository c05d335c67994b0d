"""Grouped options of the mean-teacher tasks: the pseudo-labels, CSSA's alignment, its contexts.

Each group is a frozen dataclass, so that ``cssa fit --model.help CSSATask`` reads as sections
(``--model.pseudo.threshold``, ``--model.alignment.weight``, ``--model.context.num_contexts``)
and a config writes a group as one mapping::

    model:
      class_path: cssa_lightning.CSSATask
      init_args:
        pseudo: {threshold: cat, reliability_margin: 0.1}
        alignment: {target: text, weight: 0.5}
        context: {num_contexts: 8}

A task stores each group in its hyperparameters as a plain dict (checkpoints stay loadable by
the weights-only unpickler, which refuses arbitrary classes) and keeps the typed group as an
attribute (``task.pseudo_options``, ``task.alignment_options``, ``task.context_options``).

The flat names of 0.2 (``pseudo_threshold``, ``alignment_weight``, ``num_contexts``, ...) are
:data:`FLAT_NAMES`: the tasks' constructors still take them, with a ``DeprecationWarning``, so
that checkpoints written by 0.2 and Python code load unchanged until 0.4; configs and the
command line take the groups only (an old name there is one line naming the new one).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar


def check_choices(options: Any, group: str) -> None:
    """Raise on a field of the dataclass ``options`` whose value is not one of its ``Literal``
    choices: the command line checks them, but a group built in Python (a notebook, a
    checkpoint's hyperparameters) would otherwise take a typo and fall back to a default
    branch silently.

    Raises:
        ValueError: Naming ``group.field``, the value and the choices.
    """
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        if typing.get_origin(hints[field.name]) is not Literal:
            continue
        choices = typing.get_args(hints[field.name])
        value = getattr(options, field.name)
        if value not in choices:
            raise ValueError(
                f"{group}.{field.name} must be one of {', '.join(map(repr, choices))}, "
                f"got {value!r}"
            )


@dataclass(frozen=True)
class PseudoLabelOptions:
    """How the teacher's scores become pseudo-labels
    (:class:`~cssa_lightning.methods.pseudo_labels.PseudoLabeller`).

    Args:
        threshold: How thresholds are chosen: class-distribution-aware (``cat``, CAP's CAT),
            one ``fixed`` value, or F-beta on the teacher's scores of the labeled images
            (``fbeta``, D2L's MAT).
        fixed_threshold: The threshold of ``threshold="fixed"``.
        fbeta: ``beta`` of ``threshold="fbeta"``.
        refresh: Recompute thresholds at each epoch end from the epoch's teacher scores
            (``epoch``), at every step from the latest teacher score of each image seen so far
            (``step``; every process records every process's scores), or from one pass of the
            fixed teacher over every unlabeled image (eval view) at the start of each
            semi-supervised epoch (``pass``, CAP).
        scores: Pseudo-labels from the teacher's scores of the step's weak views (``step``), or
            from the scores of the epoch-start pass (``pass``, CAP; needs ``refresh="pass"``).
        reliability_margin: Mask pseudo-labels whose probability is within this distance of
            the threshold (0 keeps all): the entries most likely to be wrong.
        negative_keep: Fraction of each class's pseudo-negatives used, lowest scores first
            (CAP: 0.998 drops the negatives just under the threshold); 1 uses all.
        memory: ``None``: remember the latest teacher score of every unlabeled image (``N x C``
            floats on every process). A number ``W``: the ``W`` latest score rows only, so that
            the memory (and the CAT thresholds' data) does not grow with the unlabeled pool;
            not with ``refresh="pass"`` or ``scores="pass"``, which need every image's row.
        prior_weight: Make the pseudo-labels from ``(1 - w) * teacher + w * prior``
            probabilities, where the prior is a frozen copy of the network as the fit starts
            (the zero-shot CLIP with its calibrated biases). The EMA teacher's errors are the
            student's own (it is the student's average), so the consistency loss confirms
            them; the prior's are not, and it keeps what pre-training knew and fine-tuning
            forgets. ``0``: the teacher alone, and no copy is kept; above 0 the copy is a third
            network in memory and in checkpoints. The evaluated teacher is never blended.
        prior_weighting: The prior's weight per class: ``prior_weight`` for every class
            (``uniform``), or ``prior_weight`` times the prior's skill on the labeled images,
            its average precision above chance, ``(AP_k - p_k) / (1 - p_k)`` clipped to
            ``[0, 1]`` with ``p_k`` the class's labeled frequency (``labeled_ap``): a class
            that pre-training never learnt (AP at chance) keeps the teacher alone. The prior
            never trained on the labeled images, so its AP there is an honest estimate;
            computed once when a fit starts (one pass of the prior over the labeled images).
        min_prior_skill: Classes whose skill on the labeled images, as the fit starts (the
            ``labeled_ap`` skill above, of the zero-shot network), is below this get no
            unlabeled loss: a class pre-training never learnt has only the teacher's
            pseudo-labels, whose errors are the student's own. ``0`` keeps every class; a
            gated class still learns from its labels.
        prior_source: Where the prior's probabilities come from: the frozen start network's
            scores (``start_network``: zero-shot CLIP with its calibrated biases), the votes
            of the ``neighbours`` labeled images nearest in the start network's global image
            space (``neighbours``: a kNN classifier over the labeled images, which knows every
            class, also those pre-training never named; see
            :class:`~cssa_lightning.methods.neighbours.NeighbourVote`), or per class the one
            more skilled on the labeled images (``best``: the start network's AP against the
            votes' leave-one-out AP). With ``neighbours`` or ``best`` the skill that
            ``prior_weighting="labeled_ap"`` and ``min_prior_skill`` read is the chosen
            source's. Needs ``prior_weight > 0``; the labeled images' features (``N x D``
            floats) are kept in memory and in checkpoints.
        neighbours: How many nearest labeled images vote.
        neighbour_temperature: Softmax temperature over the voters' cosine similarities.
    """

    threshold: Literal["cat", "fixed", "fbeta"] = "cat"
    fixed_threshold: float = 0.7
    fbeta: float = 1.0
    refresh: Literal["epoch", "step", "pass"] = "epoch"
    scores: Literal["step", "pass"] = "step"
    reliability_margin: float = 0.0
    negative_keep: float = 1.0
    memory: int | None = None
    prior_weight: float = 0.0
    prior_weighting: Literal["uniform", "labeled_ap"] = "uniform"
    min_prior_skill: float = 0.0
    prior_source: Literal["start_network", "neighbours", "best"] = "start_network"
    neighbours: int = 50
    neighbour_temperature: float = 0.2

    def __post_init__(self) -> None:
        check_choices(self, "pseudo")
        if self.scores == "pass" and self.refresh != "pass":
            raise ValueError("pseudo.scores='pass' needs pseudo.refresh='pass'")
        if self.memory is not None and self.refresh == "pass":
            raise ValueError(
                "pseudo.memory keeps the latest rows only: pseudo.refresh='pass' and "
                "pseudo.scores='pass' need a row per unlabeled image (pseudo.memory=None)"
            )
        if not 0.0 <= self.prior_weight <= 1.0:
            raise ValueError(f"pseudo.prior_weight must be in [0, 1], got {self.prior_weight}")
        if not 0.0 <= self.min_prior_skill <= 1.0:
            raise ValueError(
                f"pseudo.min_prior_skill must be in [0, 1], got {self.min_prior_skill}"
            )
        if self.prior_source != "start_network" and self.prior_weight == 0:
            raise ValueError(
                f"pseudo.prior_source={self.prior_source!r} chooses the prior's probabilities: "
                "it needs pseudo.prior_weight > 0"
            )
        if self.neighbours < 1 or self.neighbour_temperature <= 0:
            raise ValueError(
                "pseudo.neighbours must be >= 1 and pseudo.neighbour_temperature > 0, got "
                f"{self.neighbours} and {self.neighbour_temperature}"
            )


@dataclass(frozen=True)
class AlignmentOptions:
    """CSSA's one-to-one semantic alignment of label features and its absent-label push.

    Args:
        enabled: Add the alignment loss (``align``, ``align_u``).
        weight: Weight of the alignment loss.
        temperature: Temperature ``tau`` of the alignment loss.
        unlabeled: Which pseudo-positives of unlabeled images the alignment pulls to their
            targets: every pseudo-positive kept by the reliability mask (``all``), only those
            whose teacher probability clears the threshold by ``margin`` (``confident``),
            every pseudo-positive weighted by its teacher probability (``weighted``), or none:
            labeled images only (``none``).
        margin: The margin of ``unlabeled="confident"``.
        target: What each label feature is aligned with: the frozen class text ``t_k``, the
            classifier's (learnable) prototype ``w_k`` that the label is scored with, or both
            (mean of the two losses).
        in_warmup: Align the labeled images' positive label features from the first step, at
            full weight (no ramp), instead of from the warm-up's end with the auxiliary ramp:
            with ``target="text"`` the frozen class texts anchor the label features while the
            labels move them (the paper's alignment with the text features), before any
            pseudo-label exists.
        absent_push_weight: Weight of the absent-label push (0: off): the feature of each
            absent label (labeled negatives; trusted pseudo-negatives) is pushed below cosine
            ``absent_push_margin`` with the alignment target of its class.
        absent_push_margin: Cosine above which an absent label's feature is pushed.
        loss: How a positive's label feature is aligned with its class's target: the paper's
            one-to-one contrast (``contrastive``: ``-log softmax_j(cos(v_bk, a_j) / tau)[k]``,
            which pulls ``v_bk`` to ``a_k`` and, through the softmax, pushes it from every other
            class's target, hardest from the most similar ones), or the pull alone (``cosine``:
            ``1 - cos(v_bk, a_k)``, no push; ``temperature`` unused). The pair separates what
            the pull and the push each do.
        detach_targets: Stop the alignment's and the push's gradients at their targets, so
            that only the label features move: the learnable prototypes are then trained by the
            classification loss alone, as the scores read them, instead of being pushed apart by
            the label features of other classes (no effect on the frozen text targets).
        detach_features: The other way round: stop the alignment's and the push's gradients
            at the label features, so that only the learnable prototypes move (needs
            ``target="prototype"`` or ``"both"``, and not ``detach_targets``): the contrast then
            places the prototypes among the label features (a never-named class's prototype,
            which starts from a text the pre-training tied to nothing, is pulled to its
            positives and pushed from the other classes' features), while the label features
            are trained by the classification loss alone.
    """

    enabled: bool = True
    weight: float = 1.0
    temperature: float = 0.07
    unlabeled: Literal["all", "confident", "weighted", "none"] = "confident"
    margin: float = 0.2
    target: Literal["text", "prototype", "both"] = "prototype"
    in_warmup: bool = False
    absent_push_weight: float = 0.0
    absent_push_margin: float = 0.0
    loss: Literal["contrastive", "cosine"] = "contrastive"
    detach_targets: bool = False
    detach_features: bool = False

    def __post_init__(self) -> None:
        check_choices(self, "alignment")
        if self.detach_features and (self.detach_targets or self.target == "text"):
            raise ValueError(
                "alignment.detach_features leaves only the prototypes to move: it needs "
                "alignment.target 'prototype' or 'both' and alignment.detach_targets false"
            )


@dataclass(frozen=True)
class ContextOptions:
    """CSSA's context identification task.

    Args:
        enabled: Add the context identification losses (``ctx``, ``ctx_u``).
        num_contexts: Contexts ``K`` found by spectral clustering of labeled co-occurrence.
        weight: Weight of the context losses.
        target: Multi-hot contexts with BCE (``multi_hot``), or one context per image with CE
            (``single``).
        input: Feature the context head reads: the global one, or the mean label feature.
        hidden: Hidden width of the context head.
        seed: Seed of the spectral clustering.
        unlabeled_targets: The contexts of an unlabeled image come from all its hard
            pseudo-labels (``pseudo_labels``) or only from those the reliability mask keeps
            (``trusted``: a masked, uncertain pseudo-positive names no context).
        reduction: The multi-hot BCE averaged over images and contexts (``mean``) or summed
            over contexts and averaged over images (``sum``, scaled like the supervised ASL's
            sum over classes).
        inform_queries: Let the predicted contexts inform the label queries (our extension,
            not the paper's): each image's queries become ``t_k + sigmoid(c) E`` with a
            learned, zero-initialised ``(K, D)`` context embedding ``E``, so that a label is
            looked for differently in a kitchen than on a street. Needs label-specific
            features and ``input="global"``.
    """

    enabled: bool = True
    num_contexts: int = 5
    weight: float = 1.0
    target: Literal["multi_hot", "single"] = "multi_hot"
    input: Literal["global", "label_mean"] = "global"
    hidden: int = 256
    seed: int = 0
    unlabeled_targets: Literal["pseudo_labels", "trusted"] = "pseudo_labels"
    reduction: Literal["mean", "sum"] = "mean"
    inform_queries: bool = False

    def __post_init__(self) -> None:
        check_choices(self, "context")
        if self.inform_queries and not (self.enabled and self.input == "global"):
            raise ValueError(
                "context.inform_queries needs context.enabled and context.input='global'"
            )
        if self.enabled and self.num_contexts < 1:
            raise ValueError(
                f"context.num_contexts must be >= 1 with context.enabled, got {self.num_contexts}"
            )


# The flat option names of 0.2 -> (group, field) of 0.3.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "pseudo_threshold": ("pseudo", "threshold"),
    "fixed_threshold": ("pseudo", "fixed_threshold"),
    "fbeta": ("pseudo", "fbeta"),
    "threshold_refresh": ("pseudo", "refresh"),
    "pseudo_label_scores": ("pseudo", "scores"),
    "reliability_margin": ("pseudo", "reliability_margin"),
    "negative_keep": ("pseudo", "negative_keep"),
    "score_memory": ("pseudo", "memory"),
    "use_alignment": ("alignment", "enabled"),
    "alignment_weight": ("alignment", "weight"),
    "alignment_temperature": ("alignment", "temperature"),
    "alignment_unlabeled": ("alignment", "unlabeled"),
    "alignment_margin": ("alignment", "margin"),
    "alignment_target": ("alignment", "target"),
    "alignment_in_warmup": ("alignment", "in_warmup"),
    "absent_push_weight": ("alignment", "absent_push_weight"),
    "absent_push_margin": ("alignment", "absent_push_margin"),
    "use_context": ("context", "enabled"),
    "num_contexts": ("context", "num_contexts"),
    "context_weight": ("context", "weight"),
    "context_target": ("context", "target"),
    "context_input": ("context", "input"),
    "context_hidden": ("context", "hidden"),
    "context_seed": ("context", "seed"),
    "context_unlabeled_targets": ("context", "unlabeled_targets"),
    "context_reduction": ("context", "reduction"),
}

Options = TypeVar("Options", PseudoLabelOptions, AlignmentOptions, ContextOptions)


def as_dict(group: Any) -> dict[str, Any]:
    """A group as a plain dict (from its dataclass, a mapping, or ``None``: empty)."""
    if group is None:
        return {}
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        return dataclasses.asdict(group)
    if isinstance(group, Mapping):
        return dict(group)
    raise TypeError(f"expected a mapping of options, got {type(group).__name__}")


def options_of(cls: type[Options], group: Any, name: str, defaults: Any = None) -> Options:
    """The typed group ``name`` from a dataclass, a mapping of some of its fields (a config, a
    checkpoint's hyperparameters) or ``None``; fields it leaves out come from ``defaults``
    (another instance, e.g. a task's own defaults), else from ``cls``.

    Raises:
        ValueError: A field ``cls`` does not have, naming the group and the valid fields.
    """
    if isinstance(group, cls) and defaults is None:
        return group
    values = {**as_dict(defaults), **as_dict(group)}
    valid = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(
            f"{name}: no option {', '.join(map(repr, unknown))}; its options: {', '.join(valid)}"
        )
    return cls(**values)


def move_flat_names(kwargs: MutableMapping[str, Any], groups: tuple[str, ...]) -> None:
    """Move the 0.2 flat names of ``groups`` out of ``kwargs`` into ``kwargs[group]`` (a dict
    merged over what is there), in place, each with a ``DeprecationWarning``."""
    for flat in [name for name in kwargs if FLAT_NAMES.get(name, ("",))[0] in groups]:
        group, field = FLAT_NAMES[flat]
        warnings.warn(
            f"option {flat!r} is now {group}.{field} (the flat name goes in 0.4.0)",
            DeprecationWarning,
            stacklevel=3,
        )
        values = as_dict(kwargs.get(group))
        values[field] = kwargs.pop(flat)
        kwargs[group] = values


def lookup(hparams: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``hparams[name]``, where a dotted ``name`` (``alignment.weight``) reads into a group (a
    dict, or the dataclass a constructor holds before it stores the dict)."""
    value: Any = hparams
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif dataclasses.is_dataclass(value) and hasattr(value, part):
            value = getattr(value, part)
        else:
            return default
    return value


def take_group(
    cls: type[Options],
    name: str,
    given: Any,
    kwargs: MutableMapping[str, Any],
    defaults: Options | None = None,
) -> Options:
    """The typed group ``name`` of a constructor: ``given`` (its parameter: a dataclass, or a
    mapping of some fields over ``defaults``, the parameter's default) with, over it, what
    :func:`move_flat_names` moved into ``kwargs[name]`` (removed from ``kwargs``)."""
    options = options_of(cls, given, name, defaults)
    moved = kwargs.pop(name, None)
    return options if moved is None else options_of(cls, moved, name, defaults=options)


# The groups' defaults (frozen, so one shared instance is safe as a parameter default).
PSEUDO_DEFAULTS = PseudoLabelOptions()
ALIGNMENT_DEFAULTS = AlignmentOptions()
CONTEXT_DEFAULTS = ContextOptions()
