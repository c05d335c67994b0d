"""The trainable heads on top of CLIP, as plain ``nn.Module``s usable without a Trainer."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AlignmentHead(nn.Module):
    """Per-label score ``s_k = alpha * cos(v_k, t_k) + b_k``; ``sigmoid(s)`` is the probability.

    Args:
        num_classes: ``C``.
        logit_scale: Initial ``alpha`` (CLIP's own inverse temperature is a good start).
        max_logit_scale: Upper clamp of ``alpha``, as in CLIP.
    """

    def __init__(self, num_classes: int, logit_scale: float, max_logit_scale: float = 100.0):
        super().__init__()
        # alpha is stored as a log so that it stays positive.
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def cosine(self, features: Tensor, text_features: Tensor) -> Tensor:
        """``cos(v_k, t_k)``: ``features`` is ``(B, C, D)`` (one per label) or ``(B, D)``."""
        text = F.normalize(text_features, dim=-1)
        features = F.normalize(features, dim=-1)
        if features.dim() == 2:
            return features @ text.T
        return (features * text.unsqueeze(0)).sum(-1)

    def forward(self, features: Tensor, text_features: Tensor) -> Tensor:
        return self.scale * self.cosine(features, text_features) + self.bias


class CosineClassifier(AlignmentHead):
    """A cosine classifier on one feature per image, prototypes initialised from class texts.

    At initialisation its ranking of classes is zero-shot CLIP's.
    """

    def __init__(self, text_features: Tensor, logit_scale: float):
        super().__init__(text_features.shape[0], logit_scale)
        self.prototypes = nn.Parameter(F.normalize(text_features.detach().clone(), dim=-1))

    def forward(self, features: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(features, self.prototypes)


class LabelQueryCrossAttention(nn.Module):
    """Label-specific image features ``v_k = g + W_o MHA(W_q t_k, W_k P, W_v P)``.

    ``W_o`` starts at zero, so at step 0 every ``v_k`` equals the global feature ``g`` and the
    model scores exactly like zero-shot CLIP.

    Args:
        dim: Joint embedding width ``D``.
        num_heads: Attention heads (must divide ``D``).
        dropout: Attention dropout.
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the embedding width {dim}")
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(
        self, text_features: Tensor, patch_tokens: Tensor, global_feature: Tensor
    ) -> Tensor:
        """``(C, D)`` label queries, ``(B, N, D)`` patches, ``(B, D)`` global -> ``(B, C, D)``."""
        queries = (
            text_features.to(patch_tokens.dtype).unsqueeze(0).expand(patch_tokens.shape[0], -1, -1)
        )
        attended, _ = self.attention(queries, patch_tokens, patch_tokens, need_weights=False)
        return global_feature.unsqueeze(1) + attended


class ContextHead(nn.Module):
    """A small MLP giving ``K`` context logits from an image feature.

    Args:
        dim: Input width ``D``.
        num_contexts: ``K``.
        hidden: Hidden width.
        source: ``"global"`` reads the global feature ``g``; ``"label_mean"`` the mean of the
            label-specific features ``V``.
    """

    def __init__(
        self,
        dim: int,
        num_contexts: int,
        hidden: int = 256,
        source: Literal["global", "label_mean"] = "global",
    ):
        super().__init__()
        self.source = source
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_contexts))

    def forward(self, global_feature: Tensor, label_features: Tensor | None = None) -> Tensor:
        if self.source == "label_mean":
            if label_features is None:
                raise ValueError("ContextHead(source='label_mean') needs label_features")
            return self.mlp(label_features.mean(1))
        return self.mlp(global_feature)
