"""The CLIP wrapper: patch tokens and global feature in the joint space, class text features.

Wraps any ``transformers.CLIPModel`` checkpoint (a hub id such as
``openai/clip-vit-base-patch16``, a local directory saved with ``save_pretrained``, or the short
name ``"tiny-clip"`` of the checkpoint shipped with the package).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPModel

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
)

# Short names of checkpoints shipped inside the package: name -> (package, path in it).
# "tiny-clip" is the small CLIP pre-trained on the synthetic world v2, "tiny-clip-v3" and
# "tiny-clip-v4" the same model pre-trained on worlds v3 and v4 (see
# cssa_lightning/synthetic/assets/*/README.md).
PACKAGED_CHECKPOINTS = {
    "tiny-clip": ("cssa_lightning.synthetic", "assets/tiny-clip"),
    "tiny-clip-v3": ("cssa_lightning.synthetic", "assets/tiny-clip-v3"),
    "tiny-clip-v4": ("cssa_lightning.synthetic", "assets/tiny-clip-v4"),
}

# How a class is named in prompts when its dataset name is an identifier, not words: Pascal
# VOC's joined names and COCO's misspelling. Datasets keep their own names (``classes.txt``,
# labels); only the prompts use these. ``MultiLabelTask(class_prompts=...)`` adds or overrides.
PROMPT_NAMES = {
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv monitor",
    "hair drier": "hair dryer",
}


def prompt_names(
    class_names: Sequence[str], overrides: Mapping[str, str] | None = None
) -> list[str]:
    """The name of each class in its prompts: ``overrides``, else :data:`PROMPT_NAMES`, else
    the class name itself.

    Raises:
        ValueError: ``overrides`` names a class that is not in ``class_names`` (likely a typo).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(class_names))
    if unknown:
        raise ValueError(f"class_prompts names classes that do not exist: {unknown}")
    return [overrides.get(name, PROMPT_NAMES.get(name, name)) for name in class_names]


def resolve_checkpoint(name: str) -> str:
    """Where to load a checkpoint from.

    Returns the packaged directory for a short name in :data:`PACKAGED_CHECKPOINTS`
    (``"tiny-clip"``), else ``name`` as a local directory if one exists (``~`` expanded),
    else ``name`` unchanged as a hub id.
    """
    if name in PACKAGED_CHECKPOINTS:
        package, relative = PACKAGED_CHECKPOINTS[name]
        # importlib.resources locates the package without running more than its light
        # __init__ (the synthetic package loads its heavy modules lazily).
        return str(importlib.resources.files(package).joinpath(relative))
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def unloadable_checkpoint_message(name: str, error: BaseException) -> str:
    """One line: why the CLIP ``name`` cannot be loaded and what to do about it."""
    import difflib
    import os

    from cssa_lightning.guards import first_line

    close = difflib.get_close_matches(name, list(PACKAGED_CHECKPOINTS), n=1)
    if close:
        return f"CLIP checkpoint {name!r} not found; did you mean the packaged {close[0]!r}?"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    fix = (
        "HF_HUB_OFFLINE is set: download it once with a network (unset HF_HUB_OFFLINE), or name "
        "a local directory"
        if offline
        else "check the hub id and the network, or name a local directory"
    )
    return (
        f"cannot load CLIP checkpoint {name!r} ({first_line(error)}): it is not a packaged name "
        f"({', '.join(PACKAGED_CHECKPOINTS)}), a local directory or a cached hub model; {fix}"
    )


def portable_checkpoint(name: str) -> str:
    """``name`` as it should be stored in a training checkpoint.

    Packaged short names and hub ids stay as they are; a local directory is made absolute, so
    the checkpoint loads from any working directory.
    """
    if name in PACKAGED_CHECKPOINTS:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class ImageFeatures(NamedTuple):
    patch_tokens: Tensor  # (B, N, D): projected patch tokens, P in the method page
    global_feature: Tensor  # (B, D): projected pooled (CLS) output, g


class CLIPBackbone(nn.Module):
    """A ``CLIPModel`` with the two feature paths CSSA needs.

    Args:
        checkpoint: Hub id or local directory of a CLIP checkpoint (model + tokenizer).
        freeze_vision: Keep the vision tower and its projection fixed.
        freeze_text: Keep the text tower and its projection fixed.
        trainable_vision_layers: When the vision tower trains, train only its last this many
            transformer blocks (with the final norm and the projection); ``None`` trains all.
            Fewer trainable blocks cost less backward compute and memory.
        class_prompts: Prompt name of a class by class name (see :func:`prompt_names`).
    """

    def __init__(
        self,
        checkpoint: str,
        freeze_vision: bool = False,
        freeze_text: bool = True,
        trainable_vision_layers: int | None = None,
        class_prompts: Mapping[str, str] | None = None,
    ):
        super().__init__()
        source = resolve_checkpoint(checkpoint)
        try:
            # PyTorch's fused attention (flash / memory-efficient kernels on GPUs), asked for
            # by name so that a checkpoint's config cannot fall back to the slow eager attention.
            self.model = CLIPModel.from_pretrained(source, attn_implementation="sdpa")
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as error:
            raise OSError(unloadable_checkpoint_message(checkpoint, error)) from error
        self.class_prompts = dict(class_prompts or {})
        # CLIP's own temperature is not used by any head here; a trainable but unused parameter
        # would break DDP's gradient reduction.
        self.model.logit_scale.requires_grad_(False)
        for module in (self.model.vision_model, self.model.visual_projection):
            module.requires_grad_(not freeze_vision)
        for module in (self.model.text_model, self.model.text_projection):
            module.requires_grad_(not freeze_text)
        if not freeze_vision and trainable_vision_layers is not None:
            vision = self.model.vision_model
            blocks = vision.encoder.layers
            if not 0 <= trainable_vision_layers <= len(blocks):
                raise ValueError(
                    f"trainable_vision_layers must be in [0, {len(blocks)}], "
                    f"got {trainable_vision_layers}"
                )
            vision.embeddings.requires_grad_(False)
            vision.pre_layrnorm.requires_grad_(False)
            for block in blocks[: len(blocks) - trainable_vision_layers]:
                block.requires_grad_(False)
        self.freeze_vision = freeze_vision
        self.freeze_text = freeze_text

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    @property
    def logit_scale(self) -> float:
        """CLIP's learned inverse temperature, ``exp(logit_scale)``."""
        return float(self.model.logit_scale.exp())

    def encode_image(self, pixel_values: Tensor) -> ImageFeatures:
        """Projected patch tokens ``(B, N, D)`` and projected global feature ``(B, D)``."""
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        # post_layernorm is applied only to the pooled CLS token inside CLIP; apply it to every
        # token so that patches and the global feature share the joint space.
        tokens = self.model.visual_projection(vision.post_layernorm(hidden))
        return ImageFeatures(patch_tokens=tokens[:, 1:], global_feature=tokens[:, 0])

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Projected text features ``(T, D)``, not normalised."""
        device = self.model.text_projection.weight.device
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        pooled = self.model.text_model(**tokens).pooler_output
        return self.model.text_projection(pooled)

    def class_text_features(
        self, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> Tensor:
        """One L2-normalised text feature per class, averaged over prompt templates ``(C, D)``.

        Classes are named by :func:`prompt_names` (``pottedplant`` -> ``potted plant``). Each
        prompt feature is normalised before averaging (CLIP's prompt ensembling).
        """
        if not templates:
            raise ValueError("prompt templates must not be empty")
        for template in templates:
            if "{}" not in template:
                raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name")
        names = prompt_names(class_names, self.class_prompts)
        prompts = [template.format(name) for name in names for template in templates]
        features = F.normalize(self.encode_text(prompts), dim=-1)
        features = features.view(len(class_names), len(templates), -1).mean(1)
        return F.normalize(features, dim=-1)


@torch.no_grad()
def zero_shot_scores(backbone: CLIPBackbone, pixel_values: Tensor, text_features: Tensor) -> Tensor:
    """Zero-shot CLIP scores: cosine between the global image feature and each class text."""
    global_feature = backbone.encode_image(pixel_values).global_feature
    return F.normalize(global_feature, dim=-1) @ F.normalize(text_features, dim=-1).T
