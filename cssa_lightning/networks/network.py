"""The torch network behind every task: CLIP + heads, usable without a Trainer.

``MultiLabelCLIPNet`` maps images to label scores and the features the CSSA losses need. The
Lightning tasks hold one as the student and, for the mean-teacher tasks, an EMA copy as the
teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from cssa_lightning.networks.clip import CLIPBackbone
from cssa_lightning.networks.heads import (
    AlignmentHead,
    ContextHead,
    LabelQueryCrossAttention,
    LabelQueryDecoder,
    softmax_pool,
)


class Encoded(NamedTuple):
    logits: Tensor  # (B, C) label scores s
    global_feature: Tensor  # (B, D) g
    label_features: Tensor  # (B, C, D) V (g repeated when label-specific features are off)
    context_logits: Tensor | None  # (B, K) when the network has a context head
    # With a local branch (D2L): s = (global_logits + local_logits) / 2, and the patch tokens
    # the local scores come from.
    global_logits: Tensor | None = None  # (B, C)
    local_logits: Tensor | None = None  # (B, C)
    patch_tokens: Tensor | None = None  # (B, N, D)


class MultiLabelCLIPNet(nn.Module):
    """CLIP, optional label-query cross-attention, alignment head, optional context head.

    Args:
        clip: The CLIP backbone.
        class_names: Ordered class names.
        prompt_templates: Templates turning a class name into prompts.
        logit_scale: Initial inverse temperature of the alignment head.
        learnable_prototypes: Train the alignment head's class prototypes.
        label_specific: Extract one feature per label by cross-attention (CSSA idea 1);
            ``False`` uses the global feature for every label.
        attention_heads: Heads of the label-query cross-attention.
        label_query_block: One cross-attention layer (``attention``,
            :class:`~cssa_lightning.networks.heads.LabelQueryCrossAttention`) or pre-norm decoder
            blocks with an MLP (``decoder``, :class:`~cssa_lightning.networks.heads.LabelQueryDecoder`).
        label_query_depth: Blocks of the ``decoder``.
        num_contexts: Context logits of the context head; 0 for no context head.
        context_hidden: Hidden width of the context head.
        context_input: Feature the context head reads.
        context_queries: The image's predicted contexts inform its label queries: the label
            queries become ``t_k + sigmoid(c) E``, with ``c`` the context logits (from the
            global feature, detached: the context task alone trains the context head) and
            ``E`` a ``(K, D)`` embedding that starts at zero (step 0 is unchanged). Needs the
            label-query block and a context head reading the global feature.
        local_branch: Add a local branch (D2L): a second alignment head scores every patch
            token, a per-class softmax over the patches pools the scores
            (:func:`~cssa_lightning.networks.heads.softmax_pool`), and the label score is the mean of
            the global and the local score.
        label_specific_subset: Label-specific features for some classes only: a ``(C,)``
            buffer ``label_specific_classes`` (1: the label-specific feature, 0: the global
            feature ``g``; all 1 until the task sets it) gates the cross-attention's residual
            per class. Needs the label-query block.
    """

    def __init__(
        self,
        clip: CLIPBackbone,
        class_names: Sequence[str],
        prompt_templates: Sequence[str],
        logit_scale: float,
        learnable_prototypes: bool = True,
        label_specific: bool = False,
        attention_heads: int = 8,
        num_contexts: int = 0,
        context_hidden: int = 256,
        context_input: Literal["global", "label_mean"] = "global",
        local_branch: bool = False,
        label_query_block: Literal["attention", "decoder"] = "attention",
        label_query_depth: int = 1,
        context_queries: bool = False,
        label_specific_subset: bool = False,
    ):
        super().__init__()
        if context_queries and not (label_specific and num_contexts and context_input == "global"):
            raise ValueError(
                "context_queries needs label-specific features and a context head that reads "
                "the global feature (num_contexts > 0, context_input='global')"
            )
        self.clip = clip
        self.class_names = list(class_names)
        self.prompt_templates = list(prompt_templates)
        with torch.no_grad():
            text_features = clip.class_text_features(self.class_names, self.prompt_templates)
        # With a frozen text tower the class texts are computed once and saved in checkpoints.
        self.register_buffer("text_features", text_features)
        dim = clip.embed_dim
        self.cross_attention: nn.Module | None = None
        if label_specific and label_query_block == "attention":
            self.cross_attention = LabelQueryCrossAttention(dim, attention_heads)
        elif label_specific:
            self.cross_attention = LabelQueryDecoder(dim, attention_heads, label_query_depth)
        if label_specific_subset:
            if self.cross_attention is None:
                raise ValueError("label_specific_subset needs label-specific features")
            # Saved in checkpoints; only networks with the option have it, so the others'
            # state dicts are unchanged.
            self.register_buffer("label_specific_classes", torch.ones(len(self.class_names)))
        self.alignment = AlignmentHead(text_features, logit_scale, learnable_prototypes)
        self.context_head = (
            ContextHead(dim, num_contexts, context_hidden, context_input) if num_contexts else None
        )
        self.context_embedding = (
            nn.Parameter(torch.zeros(num_contexts, dim)) if context_queries else None
        )
        self.local_alignment = (
            AlignmentHead(text_features, logit_scale, learnable_prototypes)
            if local_branch
            else None
        )

    @property
    def label_specific_mask(self) -> Tensor | None:
        """``(C,)`` 1 for the classes scored from their label-specific feature; ``None``: every
        class (no ``label_specific_subset``)."""
        return getattr(self, "label_specific_classes", None)

    def class_text_features(self) -> Tensor:
        """``(C, D)`` normalised class texts: stored, or recomputed when the text tower trains."""
        if self.clip.freeze_text:
            return self.text_features
        return self.clip.class_text_features(self.class_names, self.prompt_templates)

    def forward(self, images: Tensor) -> Encoded:
        features = self.clip.encode_image(images)
        global_feature = features.global_feature
        context_logits = None
        if self.cross_attention is not None:
            queries = self.class_text_features()
            if self.context_embedding is not None:
                context_logits = self.context_head(global_feature)
                weights = torch.sigmoid(context_logits.detach())
                queries = queries + (weights @ self.context_embedding.to(weights.dtype))[:, None]
            label_features = self.cross_attention(queries, features.patch_tokens, global_feature)
            if self.label_specific_mask is not None:
                # v_k = g + m_k (v_k - g): the global feature where m_k = 0.
                residual = label_features - global_feature.unsqueeze(1)
                mask = self.label_specific_mask.to(residual.dtype)[None, :, None]
                label_features = global_feature.unsqueeze(1) + mask * residual
        else:
            label_features = global_feature.unsqueeze(1).expand(-1, len(self.class_names), -1)
        logits = self.alignment(label_features)
        if self.context_head is not None and context_logits is None:
            context_logits = self.context_head(global_feature, label_features)
        if self.local_alignment is None:
            return Encoded(logits, global_feature, label_features, context_logits)
        local_logits = softmax_pool(self.local_alignment.token_scores(features.patch_tokens))
        return Encoded(
            (logits + local_logits) / 2,
            global_feature,
            label_features,
            context_logits,
            global_logits=logits,
            local_logits=local_logits,
            patch_tokens=features.patch_tokens,
        )
