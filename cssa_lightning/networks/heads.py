"""The trainable heads on top of CLIP, as plain ``nn.Module``s usable without a Trainer."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AlignmentHead(nn.Module):
    """Per-label score ``s_k = alpha * cos(v_k, w_k) + b_k``; ``sigmoid(s)`` is the probability.

    ``w_k`` are class prototypes initialised from the class text features ``t_k``: learnable,
    or fixed to the text features. At initialisation the head ranks classes as zero-shot CLIP.

    Args:
        text_features: ``(C, D)`` class text features.
        logit_scale: Initial ``alpha`` (CLIP's own inverse temperature is a good start).
        learnable_prototypes: Train the prototypes (else they stay the text features).
        max_logit_scale: Upper clamp of ``alpha``, as in CLIP.
    """

    def __init__(
        self,
        text_features: Tensor,
        logit_scale: float,
        learnable_prototypes: bool = True,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        prototypes = F.normalize(text_features.detach().clone().float(), dim=-1)
        if learnable_prototypes:
            self.prototypes = nn.Parameter(prototypes)
        else:
            self.register_buffer("prototypes", prototypes)
        # alpha is stored as a log so that it stays positive.
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.bias = nn.Parameter(torch.zeros(text_features.shape[0]))
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def cosine(self, features: Tensor) -> Tensor:
        """``cos(v_k, w_k)``: ``features`` is ``(B, C, D)`` (one per label) or ``(B, D)``
        (one for all labels: ``(B, C)`` out); :meth:`token_scores` scores tokens."""
        prototypes = F.normalize(self.prototypes, dim=-1).to(features.dtype)
        features = F.normalize(features, dim=-1)
        if features.dim() == 2:
            return features @ prototypes.T
        return (features * prototypes.unsqueeze(0)).sum(-1)

    def token_scores(self, tokens: Tensor) -> Tensor:
        """Every label's score of every token: ``(B, N, D)`` -> ``(B, N, C)``."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        scores = self.scale * self.cosine(flat) + self.bias
        return scores.reshape(*tokens.shape[:-1], -1)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.cosine(features) + self.bias


def softmax_pool(token_scores: Tensor) -> Tensor:
    """Pool ``(B, N, C)`` token scores into ``(B, C)``: per class, the scores weighted by their
    softmax over the tokens, ``sum_n softmax_n(z)_nc z_nc`` (D2L's local branch), between the
    mean and the max, so the regions that show a class decide its score."""
    return (torch.softmax(token_scores, dim=1) * token_scores).sum(1)


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
        """``(C, D)`` label queries (or ``(B, C, D)``, one set per image), ``(B, N, D)``
        patches, ``(B, D)`` global -> ``(B, C, D)``."""
        queries = per_image(text_features.to(patch_tokens.dtype), patch_tokens.shape[0])
        attended, _ = self.attention(queries, patch_tokens, patch_tokens, need_weights=False)
        return global_feature.unsqueeze(1) + attended


def per_image(queries: Tensor, batch: int) -> Tensor:
    """``(B, C, D)`` queries: ``queries`` as they are when already per image, else the one
    ``(C, D)`` set for every image."""
    return queries if queries.ndim == 3 else queries.unsqueeze(0).expand(batch, -1, -1)


class LabelQueryDecoder(nn.Module):
    """Label-specific features from a stack of pre-norm decoder blocks (Query2Label /
    ML-Decoder style): per block, the label queries attend to the patch tokens, then an MLP;
    both are residual. ``v_k = g + W_o x_k`` where ``x_k`` starts as the query ``W_q t_k``.

    ``W_o`` starts at zero, so at step 0 every ``v_k`` equals the global feature ``g`` and the
    model scores exactly like zero-shot CLIP, as with :class:`LabelQueryCrossAttention`.

    Args:
        dim: Joint embedding width ``D``.
        num_heads: Attention heads (must divide ``D``).
        depth: Decoder blocks.
        mlp_ratio: Hidden width of each block's MLP, in multiples of ``D``.
        dropout: Attention and MLP dropout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        depth: int = 1,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the embedding width {dim}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        hidden = max(1, round(dim * mlp_ratio))
        self.query = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm_q": nn.LayerNorm(dim),
                    "norm_kv": nn.LayerNorm(dim),
                    "attention": nn.MultiheadAttention(
                        dim, num_heads, dropout=dropout, batch_first=True
                    ),
                    "norm_mlp": nn.LayerNorm(dim),
                    "mlp": nn.Sequential(
                        nn.Linear(dim, hidden),
                        nn.GELU(),
                        nn.Dropout(dropout),
                        nn.Linear(hidden, dim),
                    ),
                }
            )
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, text_features: Tensor, patch_tokens: Tensor, global_feature: Tensor
    ) -> Tensor:
        """``(C, D)`` label queries (or ``(B, C, D)``, one set per image), ``(B, N, D)``
        patches, ``(B, D)`` global -> ``(B, C, D)``."""
        queries = self.query(text_features.to(patch_tokens.dtype))
        x = per_image(queries, patch_tokens.shape[0])
        for block in self.blocks:
            memory = block["norm_kv"](patch_tokens)
            attended, _ = block["attention"](block["norm_q"](x), memory, memory, need_weights=False)
            x = x + attended
            x = x + block["mlp"](block["norm_mlp"](x))
        return global_feature.unsqueeze(1) + self.out(self.norm_out(x))


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
