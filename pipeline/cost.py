"""The cost model: how much work a row is for the model, in one place, so that every consumer weighs it alike.

A row's work has two parts, each in forward FLOPs (2 per multiply-add) counted from the model shape:

- vision: its tiles × patches per tile × FLOPs per patch. A tile is what the vision tower encodes once (the
  global view or one local tile: 1 + w·h per image of grid w×h, `pipeline.packing.row_tiles`); a tile has
  (image_size // patch_size)² patches (729 for SigLIP at 384 px with 14 px patches). Per patch: the patch
  embedding (3·p²·W), then per block the q, k, v and output projections (4·W²), attention over the tile's own
  patches (2·N·W, N patches: a tile attends only to itself, so this is fixed per tile) and the MLP (2·W·M).
- language: its tokens × FLOPs per token. Tokens are `seq_len`: every position the language model runs,
  the pad tail of a packed row included. Per token: per layer the attention projections (MHA 4·h²; MLA its
  low-rank q and kv projections and the output), the MLP a token passes (dense 3·h·I; MoE 3·h·I_moe for each
  shared expert and each of the num_experts_per_tok routed ones, plus the router h·E), then the lm_head
  (h·V).

Left out, because they are small or do not depend on the row's size: the adaptor (under 1% of a tile's
vision work for DeepSeek-VL2), embeddings and norms, and the language model's attention over the context,
which depends on document lengths (a few percent of the projections at 4096 tokens for tiny). Backward passes
cost about twice the forward for both parts, so the ratio between them, which is what balancing uses, holds.

For DeepSeek-VL2-Tiny one tile costs about as much as 580 tokens: 0.91 GFLOP a patch, 1.15 GFLOP a token.
`pipeline.loader.ShardDataset(balance="cost")` balances `total`; `balance="tiles"` balances tiles alone (the
vision work, which is proportional to them), tokens breaking ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from model_shapes import ModelShape

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Work per tile and per token (see the module docstring); `for_shape` counts them from a shape."""

    patches_per_tile: int
    flops_per_patch: float
    flops_per_token: float

    @classmethod
    def for_shape(cls, shape: ModelShape) -> CostModel:
        """The cost model of `shape`'s vision tower and language model."""
        vision, language = shape.vision, shape.language
        width, patches = vision.width, vision.grid**2
        per_block = 4 * width**2 + 2 * patches * width + 2 * width * vision.mlp_hidden
        per_patch = 3 * vision.patch_size**2 * width + vision.layers * per_block
        h = language.hidden_size
        heads = language.num_attention_heads
        if language.use_mla:
            q_width = heads * language.q_head_dim
            q = h * q_width if language.q_lora_rank is None else language.q_lora_rank * (h + q_width)
            kv = h * (language.kv_lora_rank + language.qk_rope_head_dim) + language.kv_lora_rank * heads * (
                language.qk_nope_head_dim + language.v_head_dim
            )
            attention = q + kv + heads * language.v_head_dim * h
        else:
            attention = 4 * h**2
        experts = language.n_shared_experts + language.num_experts_per_tok
        moe = 3 * h * language.moe_intermediate_size * experts + h * language.n_routed_experts
        dense = 3 * h * language.intermediate_size
        mlps = sum(
            moe if language.is_moe_layer(layer) else dense for layer in range(language.num_hidden_layers)
        )
        per_token = language.num_hidden_layers * attention + mlps + h * language.vocab_size
        return cls(patches_per_tile=patches, flops_per_patch=2.0 * per_patch, flops_per_token=2.0 * per_token)

    def vision(self, tiles: ArrayLike) -> np.ndarray:
        """Vision tower FLOPs of `tiles` tiles (float64, the shape of `tiles`)."""
        return np.asarray(tiles, dtype=np.float64) * (self.patches_per_tile * self.flops_per_patch)

    def language(self, tokens: ArrayLike) -> np.ndarray:
        """Language model FLOPs of `tokens` positions (float64, the shape of `tokens`)."""
        return np.asarray(tokens, dtype=np.float64) * self.flops_per_token

    def total(self, tiles: ArrayLike, tokens: ArrayLike) -> np.ndarray:
        """Vision + language FLOPs."""
        return self.vision(tiles) + self.language(tokens)
