"""Alt-text-like captions of world images, for CLIP pre-training, and their closed vocabulary.

A caption mentions a random subset of an image's objects (like real alt text, it rarely lists
everything, and small objects are mentioned less often), sometimes the setting, in varied
wording. How often objects are named is a :class:`CaptionStyle`: world v2's captions name a
non-empty subset; world v3's name fewer objects and almost never name its *rare* classes (which
then only labels can teach), and an image that holds nothing nameable gets a setting-only
caption. Every word a caption can contain is in :func:`vocabulary`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cssa_lightning.synthetic.contexts import CONTEXT_BY_NAME, CONTEXT_NAMES, CONTEXTS
from cssa_lightning.synthetic.shapes import CLASS_BY_NAME, CLASS_NAMES


@dataclass(frozen=True)
class CaptionStyle:
    """How often a caption names what an image holds.

    Attributes:
        mention_prob: Probability that a caption keeps an object.
        small_mention_prob: The same for small objects (easier to overlook).
        setting_prob: Probability that a caption names the setting.
        rare_classes: Classes that captions (and pre-training prompts) name only with
            ``rare_mention_prob``: the text prior knows little of them.
        rare_mention_prob: Probability that a caption keeps an object of a rare class.
    """

    mention_prob: float = 0.65
    small_mention_prob: float = 0.4
    setting_prob: float = 0.4
    rare_classes: tuple[str, ...] = ()
    rare_mention_prob: float = 0.0

    def __post_init__(self) -> None:
        unknown = [n for n in self.rare_classes if n not in CLASS_BY_NAME]
        if unknown:
            raise ValueError(f"rare_classes has unknown class names {unknown}")

    def is_rare(self, name: str) -> bool:
        return name in self.rare_classes


#: World v2's captions: every caption names at least one object; no class is rare.
V2_CAPTIONS = CaptionStyle()

# Templates over the object phrase ({objects}: "a cup and two apple"; {bare}: "cup, apple").
_TEMPLATES: tuple[str, ...] = (
    "{bare}",
    "{objects}",
    "a photo of {objects}",
    "a picture of {objects}",
    "an image of {objects}",
    "this photo shows {objects}",
    "there is {objects}",
    "close up of {objects}",
    "a snapshot of {objects}",
    "look at {objects}",
    "{objects} together",
    "my {bare}",
    "a simple drawing of {objects}",
    "just {objects}",
)
# Templates that name the setting ({setting}: "on the beach"; {context}: "beach").
_SETTING_TEMPLATES: tuple[str, ...] = (
    "{objects} {setting}",
    "a photo of {objects} {setting}",
    "a picture of {objects} {setting}",
    "{setting}: {bare}",
    "a {context} scene with {objects}",
    "a {context} with {objects}",
    "{context}: {bare}",
    "there is {objects} {setting}",
)
# Captions that name no object (an image whose objects a rare-class style left all unnamed).
_SETTING_ONLY_TEMPLATES: tuple[str, ...] = (
    "a photo {setting}",
    "a picture {setting}",
    "a {context} scene",
    "{context}",
    "just {setting}",
)
_JOINERS: tuple[str, ...] = (" and ", ", ", " with ", " plus ", " next to ", " near ")
# Prompt templates used at zero-shot time (cssa_lightning.networks.clip.DEFAULT_TEMPLATES).
_PROMPT_WORDS: tuple[str, ...] = ("a", "photo", "picture", "of", "the")


def split_words(text: str) -> list[str]:
    """Lowercase words of a caption or prompt, punctuation stripped."""
    return re.findall(r"[a-z]+", text.lower())


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _join(parts: Sequence[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    joiner = _JOINERS[int(rng.integers(len(_JOINERS)))]
    if joiner == ", " and rng.random() < 0.5:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return joiner.join(parts)


def make_caption(
    objects: Sequence[str],
    context: str,
    rng: np.random.Generator,
    small: Sequence[bool] | None = None,
    style: CaptionStyle = V2_CAPTIONS,
) -> str:
    """An alt-text-like caption of an image.

    Args:
        objects: Class name of every object in the image (repeats allowed, at least one).
        context: The image's context name.
        rng: Random generator choosing subset, order and phrasing.
        small: Per object, whether it is small (mentioned less often); ``None``: none is.
        style: How often objects, small objects, rare classes and the setting are named.

    Returns:
        A caption such as "a cup with two apple", "spoon, plate" or "a photo of a crab on
        the beach". The class names it contains are a subset of ``objects``: non-empty unless
        every object is of a rare class and none was kept (then "a photo on the beach").

    Raises:
        ValueError: If ``objects`` is empty or a name is unknown, or ``context`` is unknown.
    """
    if not objects:
        raise ValueError("objects must not be empty")
    unknown = [n for n in objects if n not in CLASS_BY_NAME]
    if unknown:
        raise ValueError(f"objects has unknown class names {unknown}")
    if context not in CONTEXT_BY_NAME:
        raise ValueError(f"context {context!r} is unknown")
    small = [False] * len(objects) if small is None else list(small)
    keep_prob = np.where(small, style.small_mention_prob, style.mention_prob)
    rare = np.array([style.is_rare(n) for n in objects])
    keep_prob = np.where(rare, style.rare_mention_prob, keep_prob)
    kept = rng.random(len(objects)) < keep_prob
    if not kept.any():
        nameable = np.flatnonzero(~rare)
        if len(nameable) == 0:
            settings = CONTEXT_BY_NAME[context].settings
            template = _SETTING_ONLY_TEMPLATES[int(rng.integers(len(_SETTING_ONLY_TEMPLATES)))]
            setting = settings[int(rng.integers(len(settings)))]
            return template.format(setting=setting, context=context)
        kept[int(nameable[int(rng.integers(len(nameable)))])] = True
    counts: dict[str, int] = {}
    for name, keep in zip(objects, kept.tolist(), strict=True):
        if keep:
            counts[name] = counts.get(name, 0) + 1
    names = [str(n) for n in rng.permutation(list(counts))]
    bare = _join(names, rng)
    objects_phrase = _join(
        [f"two {n}" if counts[n] >= 2 and rng.random() < 0.7 else _article(n) for n in names],
        rng,
    )
    if rng.random() < style.setting_prob:
        settings = CONTEXT_BY_NAME[context].settings
        template = _SETTING_TEMPLATES[int(rng.integers(len(_SETTING_TEMPLATES)))]
        setting = settings[int(rng.integers(len(settings)))]
    else:
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        setting = ""
    return template.format(objects=objects_phrase, bare=bare, setting=setting, context=context)


def template_words() -> set[str]:
    """Every word of the caption machinery besides class and context names."""
    words = {"a", "an", "two", *_PROMPT_WORDS}
    for text in (*_TEMPLATES, *_SETTING_TEMPLATES, *_SETTING_ONLY_TEMPLATES, *_JOINERS):
        words |= set(split_words(re.sub(r"\{\w+\}", " ", text)))
    for context in CONTEXTS:
        for setting in context.settings:
            words |= set(split_words(setting))
    return words


def vocabulary() -> list[str]:
    """Every word a caption or a prompt like "a photo of a {name}." can hold.

    Returns:
        Sorted unique lowercase words: template and setting words, class and context names.
    """
    return sorted(template_words() | set(CLASS_NAMES) | set(CONTEXT_NAMES))
