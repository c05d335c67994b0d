"""Contexts (settings) of the synthetic world: which classes co-occur, and background styles.

A context is defined by the objects that appear together, not by the background: each image
picks one context, and each of its objects is drawn from that context's Zipf-weighted class
list (most frequent first) or, with probability :data:`OUT_OF_CONTEXT_PROB`, uniformly from
the classes outside it. Classes are shared between two or three contexts, so contexts overlap.

Backgrounds are mostly neutral: with probability :data:`CONTEXT_BACKGROUND_PROB` an image
uses its context's own style, otherwise one of :data:`NEUTRAL_STYLES`, chosen independently
of the context (so the background alone does not give the context away).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cssa_lightning.synthetic.shapes import CLASS_NAMES, RGB

# Exponent of the Zipf-like class weights inside a context (rank r gets 1/r^s).
ZIPF_EXPONENT = 1.1
# Probability that an object is drawn uniformly from the classes NOT in the image's context
# (so every such draw really is out of context and the measured fraction equals this).
OUT_OF_CONTEXT_PROB = 0.1
# Probability that the background uses the context's own style instead of a neutral one.
CONTEXT_BACKGROUND_PROB = 0.2

#: Context-free background styles (see :mod:`cssa_lightning.synthetic.render`): a plain
#: colour with a gentle gradient, low-frequency coloured noise, a soft grey grid and light
#: diagonal stripes; their colours are random and independent of the context.
NEUTRAL_STYLES: tuple[str, ...] = ("gradient", "noise", "grid", "diagonal")


@dataclass(frozen=True)
class Context:
    """A setting whose classes co-occur.

    Attributes:
        name: Single lowercase word.
        classes: Classes found here, most frequent first (Zipf rank).
        style: The context's own background style (used in a minority of images).
        palette: Base colours of that style.
        settings: Phrases captions use to name the setting ("in the kitchen").
    """

    name: str
    classes: tuple[str, ...]
    style: str
    palette: tuple[RGB, ...]
    settings: tuple[str, ...]


#: Context definitions, most frequent first. The v1 scenes keep their background styles.
CONTEXTS: tuple[Context, ...] = (
    Context(
        "kitchen",
        ("plate", "cup", "spoon", "egg", "fork", "banana", "orange", "bottle", "apple", "carrot"),
        "tiles",
        ((200, 172, 135), (165, 135, 105)),
        ("in the kitchen", "on the kitchen table", "at breakfast"),
    ),
    Context(
        "beach",
        (
            "shell",
            "fish",
            "umbrella",
            "starfish",
            "crab",
            "ball",
            "boat",
            "sun",
            "anchor",
            "bucket",
        ),
        "horizon",
        ((120, 185, 235), (225, 205, 150)),
        ("on the beach", "at the beach", "by the sea"),
    ),
    Context(
        "street",
        ("car", "bus", "lamp", "house", "umbrella", "tree", "key", "bird", "bell"),
        "stripes",
        ((110, 110, 115), (150, 150, 150)),
        ("on the street", "in the street", "in town"),
    ),
    Context(
        "forest",
        ("tree", "mushroom", "leaf", "tent", "flower", "bird", "moon", "apple"),
        "blotches",
        ((70, 90, 55), (115, 105, 65)),
        ("in the forest", "in the woods"),
    ),
    Context(
        "party",
        ("cake", "balloon", "gift", "candle", "hat", "heart", "cup", "star", "plate", "ball"),
        "confetti",
        ((245, 225, 235), (250, 240, 200)),
        ("at a party", "at the party", "on the party table"),
    ),
    Context(
        "farm",
        ("carrot", "kite", "egg", "house", "flower", "hat", "cloud", "bird", "bucket", "tree"),
        "rows",
        ((150, 185, 80), (190, 170, 90)),
        ("on the farm", "in the field"),
    ),
    Context(
        "study",
        ("book", "pencil", "clock", "lamp", "cup", "key", "candle", "bottle", "bell"),
        "planks",
        ((150, 105, 65), (120, 80, 50)),
        ("in the study", "on the desk", "on a desk"),
    ),
    Context(
        "space",
        ("star", "planet", "rocket", "moon", "sun", "cloud", "flag"),
        "dots",
        ((15, 15, 40), (40, 25, 70)),
        ("in space", "in the sky", "in the night sky"),
    ),
)
CONTEXT_NAMES: tuple[str, ...] = tuple(c.name for c in CONTEXTS)
CONTEXT_BY_NAME: dict[str, Context] = {c.name: c for c in CONTEXTS}


def zipf_weights(n: int) -> np.ndarray:
    """Normalised weights ``1 / r^s`` of ranks ``r = 1..n``."""
    w = 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT
    return w / w.sum()


#: Probability of each context, in :data:`CONTEXTS` order: contexts are long-tailed too
#: (kitchen ~40 % of images, space ~4 %), which makes the global class priors long-tailed.
CONTEXT_PROBS: np.ndarray = zipf_weights(len(CONTEXTS))


#: Per context: in-context class weights and the classes outside it.
CONTEXT_WEIGHTS: dict[str, np.ndarray] = {c.name: zipf_weights(len(c.classes)) for c in CONTEXTS}
OUTSIDE_CLASSES: dict[str, tuple[str, ...]] = {
    c.name: tuple(n for n in CLASS_NAMES if n not in c.classes) for c in CONTEXTS
}


def contexts_of(name: str) -> tuple[str, ...]:
    """Names of the contexts a class belongs to."""
    return tuple(c.name for c in CONTEXTS if name in c.classes)


def _check_contexts() -> None:
    """Fail at import if the definitions drift out of their contract."""
    for context in CONTEXTS:
        assert re.fullmatch(r"[a-z]+", context.name), context.name
        assert 7 <= len(context.classes) <= 10, context.name
        assert len(set(context.classes)) == len(context.classes), context.name
        assert set(context.classes) <= set(CLASS_NAMES), context.name
    membership = Counter(n for c in CONTEXTS for n in c.classes)
    assert set(membership) == set(CLASS_NAMES), set(CLASS_NAMES) - set(membership)
    assert sum(k >= 2 for k in membership.values()) >= 10
    assert max(membership.values()) <= 3


_check_contexts()
