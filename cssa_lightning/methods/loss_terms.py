"""The loss terms of a mean-teacher training step, declared as rows of one table.

A task lists its terms in ``loss_terms`` (a tuple of :class:`LossTerm`); which terms run, their
names in the logs, their weights at each step and whether the unlabeled stream is needed at all
are read from that table (:class:`~cssa_lightning.methods.mean_teacher.MeanTeacherTask`), so a subclass
adds a term by adding a row and the method that computes it::

    class EntropyTask(MeanTeacherTask):
        loss_terms = MeanTeacherTask.loss_terms + (
            LossTerm("ent_u", "unlabeled", "entropy_loss", weight="entropy_weight", ramp="always"),
        )

        def entropy_loss(self, strong, probs, pseudo): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cssa_lightning.methods.options import lookup

Stream = Literal["labeled", "unlabeled"]
Ramp = Literal["none", "always", "auxiliary"]
RAMPS: tuple[str, ...] = ("none", "always", "auxiliary")
# Whether a term is on, from the task's hyperparameters.
Switch = Callable[[Mapping[str, Any]], bool]


def always(hparams: Mapping[str, Any]) -> bool:
    """The switch of a term that every configuration uses."""
    return True


def option(name: str, default: bool = True) -> Switch:
    """The switch of a term turned on and off by the boolean option ``name`` (dotted for a
    group's: ``alignment.enabled``; ``default`` when the option is absent: checkpoints
    written before an on-switch existed had the term)."""

    def switch(hparams: Mapping[str, Any]) -> bool:
        return bool(lookup(hparams, name, default))

    switch.__qualname__ = f"option({name!r})"
    return switch


@dataclass(frozen=True)
class LossTerm:
    """One named term of the training loss.

    Args:
        name: Its name in the logs (``train/loss_<name>``) and in ``loss_weights``.
        stream: The images it is computed on. A ``labeled`` term's method takes
            ``(student: Encoded, targets: Tensor)``, the student's encoding of the labeled
            images and their labels; an ``unlabeled`` term's takes ``(strong: Encoded, probs:
            Tensor, pseudo: PseudoLabels)``, the student's encoding of the strong views and
            the teacher's probabilities and pseudo-labels of the weak ones. Both return a
            0-dim loss.
        method: The name of the task method that computes it (a name, not a function, so
            that a subclass changes the term by overriding that method).
        weight: The name of the option holding its weight (dotted for a group's:
            ``alignment.weight``), or a constant weight.
        ramp: How the weight follows the ramp after the warm-up (``ramp`` of the task, 0 to 1
            over ``rampup_epochs``): not at all (``none``), always (``always``, as the
            consistency weight ``lambda_u``), or when the task's ``ramp_auxiliary`` option is
            on (``auxiliary``: terms that help the consistency one along); or a function of
            the hyperparameters giving one of those.
        enabled: Whether a configuration uses the term, from the task's hyperparameters (see
            :func:`option`). A disabled term is never computed nor logged.
        warmup: Computed during the warm-up too (the supervised term; a labeled term may
            depend on an option, e.g. ``option("alignment.in_warmup", default=False)``;
            unlabeled terms wait for the warm-up's end, when the teacher has learnt something).
    """

    name: str
    stream: Stream
    method: str
    weight: str | float = 1.0
    ramp: Ramp | Callable[[Mapping[str, Any]], Ramp] = "none"
    enabled: Switch = always
    warmup: bool | Switch = False

    def __post_init__(self) -> None:
        if self.stream not in ("labeled", "unlabeled"):
            raise ValueError(f"{self.name}: stream must be 'labeled' or 'unlabeled'")
        if not callable(self.ramp) and self.ramp not in RAMPS:
            raise ValueError(f"{self.name}: ramp must be 'none', 'always' or 'auxiliary'")
        if self.warmup is not False and self.stream == "unlabeled":
            raise ValueError(f"{self.name}: unlabeled terms start after the warm-up")

    def base_weight(self, hparams: Mapping[str, Any]) -> float:
        """The weight before the ramp and the unlabeled-stream scaling."""
        return lookup(hparams, self.weight) if isinstance(self.weight, str) else self.weight

    def ramp_of(self, hparams: Mapping[str, Any]) -> Ramp:
        """How this configuration ramps the term's weight."""
        ramp = self.ramp(hparams) if callable(self.ramp) else self.ramp
        if ramp not in RAMPS:
            raise ValueError(f"{self.name}: ramp must be 'none', 'always' or 'auxiliary'")
        return ramp

    def in_warmup(self, hparams: Mapping[str, Any]) -> bool:
        """Whether this configuration computes the term during the warm-up."""
        return bool(self.warmup(hparams) if callable(self.warmup) else self.warmup)


def check_table(terms: Iterable[LossTerm]) -> None:
    """Refuse a table that names a term twice.

    Raises:
        ValueError: Naming the repeated term.
    """
    seen: set[str] = set()
    for term in terms:
        if term.name in seen:
            raise ValueError(f"the loss term {term.name!r} is declared twice")
        seen.add(term.name)
