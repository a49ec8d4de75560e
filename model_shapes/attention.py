"""The two attention blocks of the language model: LLaMA-style MHA (tiny) and Multi-head Latent Attention
(small, base). Both take hidden states [batch, seq, hidden] with the RoPE cos/sin of their rope width and a
mask from :mod:`model_shapes.masks` (None = plain causal), and return [batch, seq, hidden]. Parameter names
are the official ones (``q_proj``/``k_proj``/``v_proj``/``o_proj``; ``q_proj`` or
``q_a_proj``/``q_a_layernorm``/``q_b_proj``, ``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``,
``o_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_shapes.kernels import needs_autograd, use_triton
from model_shapes.kernels.mla import mla_attention
from model_shapes.masks import documents_from_mask
from model_shapes.norm import RMSNorm
from model_shapes.rope import apply_rope
from model_shapes.shape import LanguageShape


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention over [batch, seq, heads, dim] tensors (keys/values may have one head
    shared by all query heads); returns [batch, seq, heads, v_dim]."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """LLaMA attention as transformers 4.38 computes it for ``use_mla=false``: q/k/v/o projections of
    heads × head_dim, half-split RoPE over the whole head, scale head_dim^-0.5."""

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        self.heads = shape.num_attention_heads
        self.head_dim = shape.head_dim
        width = self.heads * self.head_dim
        bias = shape.attention_bias
        self.q_proj = nn.Linear(shape.hidden_size, width, bias=bias)
        self.k_proj = nn.Linear(shape.hidden_size, width, bias=bias)
        self.v_proj = nn.Linear(shape.hidden_size, width, bias=bias)
        self.o_proj = nn.Linear(width, shape.hidden_size, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``documents`` is unused: attention here always follows ``mask``."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.heads, self.head_dim)
        q = apply_rope(q, cos, sin, interleaved=False)
        k = apply_rope(k, cos, sin, interleaved=False)
        out = _attend(q, k, v, mask, self.head_dim**-0.5)
        return self.o_proj(out.reshape(batch, seq, -1))


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 MLA (spec §5).

    Queries come from ``q_proj`` or the q-LoRA path; keys and values from a shared latent c (kv_lora_rank
    wide, RMS-normed) expanded per head by ``kv_b_proj`` ([k_nope | v] per head), plus one rope key shared by
    all heads. RoPE (consecutive pairs) touches only the rope part; the scale is (d_nope + d_rope)^-0.5.

    ``absorb`` chooses between two equal computations: True (the default, what the official eager code runs)
    folds kv_b_proj into the query and the output, so attention runs over the latent c and the rope key
    directly (one key head of width kv_lora_rank + d_rope, as cached at inference); False expands per-head
    keys and values first, which costs fewer FLOPs per score when the sequence is long and everything is
    recomputed.

    With ``absorb`` and the Triton backend (:mod:`model_shapes.kernels`), attention over the latent runs in
    the MLA kernel whenever the mask can be given as documents (plain causal, packed, left-padded; see
    :func:`model_shapes.masks.documents_from_mask`), and in torch's SDPA otherwise.
    """

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        self.heads = shape.num_attention_heads
        self.nope_dim = shape.qk_nope_head_dim
        self.rope_dim = shape.qk_rope_head_dim
        self.v_dim = shape.v_head_dim
        self.rank = shape.kv_lora_rank
        self.scale = (self.nope_dim + self.rope_dim) ** -0.5
        self.absorb = True
        q_width = self.heads * (self.nope_dim + self.rope_dim)
        hidden, bias = shape.hidden_size, shape.attention_bias
        if shape.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, q_width, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, shape.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(shape.q_lora_rank, shape.rms_norm_eps)
            self.q_b_proj = nn.Linear(shape.q_lora_rank, q_width, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.rank, shape.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, self.heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, hidden, bias=bias)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``documents``: ``documents_from_mask(mask, ...)`` when the caller has it (the decoder computes it
        once for all layers); derived here when the kernel runs and it is not given."""
        batch, seq, _ = x.shape
        q = self._queries(x).view(batch, seq, self.heads, self.nope_dim + self.rope_dim)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, interleaved=True)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        k_rope = apply_rope(k_rope[:, :, None, :], cos, sin, interleaved=True)  # one head, shared

        # kv_b_proj viewed per head: rows [0, nope) map c to k_nope (W_UK), rows [nope, nope + v) to v (W_UV).
        w_uk, w_uv = self.kv_b_proj.weight.view(self.heads, self.nope_dim + self.v_dim, self.rank).split(
            [self.nope_dim, self.v_dim], dim=1
        )
        if self.absorb:
            q_latent = torch.einsum("bshn,hnr->bshr", q_nope, w_uk)
            queries = torch.cat((q_latent, q_rope), dim=-1)
            keys = torch.cat((latent[:, :, None, :], k_rope), dim=-1)
            # The (forward-only) Triton kernel takes documents; the torch path keeps the batched SDPA.
            kernel = use_triton(x) and not needs_autograd(queries, keys)
            if kernel and documents is None:
                documents = documents_from_mask(mask, batch, seq, x.device)
            if not kernel or documents is None:
                context = _attend(queries, keys, latent[:, :, None, :], mask, self.scale)
            else:
                context = mla_attention(
                    queries.flatten(0, 1),
                    keys.flatten(0, 2),
                    self.rank,
                    self.scale,
                    documents,
                    check_bounds=False,
                ).view(batch, seq, self.heads, self.rank)
            out = torch.einsum("bshr,hvr->bshv", context, w_uv)
        else:
            k_nope = torch.einsum("bsr,hnr->bshn", latent, w_uk)
            values = torch.einsum("bsr,hvr->bshv", latent, w_uv)
            keys = torch.cat((k_nope, k_rope.expand(-1, -1, self.heads, -1)), dim=-1)
            out = _attend(torch.cat((q_nope, q_rope), dim=-1), keys, values, mask, self.scale)
        return self.o_proj(out.reshape(batch, seq, self.heads * self.v_dim))
