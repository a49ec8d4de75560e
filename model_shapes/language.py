"""The DeepSeek-V2-style decoder (``language.*``): token embedding, pre-norm decoder layers (RMSNorm, MHA or
MLA, RMSNorm, dense SwiGLU for the first ``first_k_dense_replace`` layers and MoE after), final RMSNorm,
untied ``lm_head``."""

from __future__ import annotations

import torch
from torch import nn

from model_shapes.attention import MultiHeadAttention, MultiHeadLatentAttention
from model_shapes.kernels import use_triton
from model_shapes.masks import attention_mask_4d, default_position_ids, documents_from_mask
from model_shapes.moe import MoE, SwiGLU
from model_shapes.norm import RMSNorm
from model_shapes.rope import rope_angles
from model_shapes.shape import LanguageShape


class DecoderLayer(nn.Module):
    """x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)); the second residual add
    is fused into the post-attention norm."""

    def __init__(self, shape: LanguageShape, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        attention = MultiHeadLatentAttention if shape.use_mla else MultiHeadAttention
        self.self_attn = attention(shape)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = (
            MoE(shape) if shape.is_moe_layer(layer) else SwiGLU(shape.hidden_size, shape.intermediate_size)
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, documents)
        normed, x = self.post_attention_layernorm(attended, residual=x)
        return x + self.mlp(normed)


class DecoderModel(nn.Module):
    """``language.model``: embeddings [batch, seq, hidden] → final-normed hidden states of the same shape."""

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        self.use_mla = shape.use_mla
        self.rope_dim = shape.qk_rope_head_dim if shape.use_mla else shape.head_dim
        self.rope_theta = shape.rope_theta
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape, layer) for layer in range(shape.num_hidden_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :mod:`model_shapes.masks` for ``attention_mask`` (1 = real token, 0 = padding),
        ``position_ids`` (default: 0..seq-1 per row, or per document when packed) and ``cu_seqlens`` (packed
        documents)."""
        batch, seq, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, device, cu_seqlens)
        cos, sin = rope_angles(position_ids.to(device), self.rope_dim, self.rope_theta, inputs_embeds.dtype)
        mask = attention_mask_4d(attention_mask, cu_seqlens, batch, seq, device)
        # The MLA kernel takes the mask as documents: derived once here, not in every layer.
        documents = (
            documents_from_mask(mask, batch, seq, device)
            if self.use_mla and use_triton(inputs_embeds)
            else None
        )
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, documents)
        return self.norm(x)


class CausalLM(nn.Module):
    """``language``: the decoder (``model``) and the untied output projection (``lm_head``)."""

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        self.model = DecoderModel(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits [batch, seq, vocab] for every position."""
        hidden = self.model(inputs_embeds, attention_mask, position_ids, cu_seqlens)
        return self.lm_head(hidden).float()
