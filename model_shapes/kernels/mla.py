"""Multi-head Latent Attention over the latent, with absorbed weights (the ``absorb=True`` computation of
:class:`model_shapes.attention.MultiHeadLatentAttention`), for packed documents: a Triton kernel and its
plain torch reference.

Shapes, over the flattened token stream of a batch:

- ``q`` [tokens, heads, rank + rope]: per head, the query mapped into the latent space (q_nope · W_UK) then
  the rope query;
- ``kv`` [tokens, rank + rope]: the one key head shared by all query heads, [latent c | rope key]; the values
  are its first ``rank`` columns (the latent itself);
- ``cu_seqlens`` [documents + 1]: document bounds (the flash-attention "varlen" convention of
  :mod:`model_shapes.masks`: 0, ..., tokens). A query attends the keys of its own document at positions up to
  its own;
- result [tokens, heads, rank]: the attention-weighted latent per head (before W_UV).
"""

from __future__ import annotations

import torch

from model_shapes.kernels import needs_autograd, use_triton


def _check(
    q: torch.Tensor, kv: torch.Tensor, rank: int, cu_seqlens: torch.Tensor, bounds: bool = True
) -> None:
    if q.dim() != 3 or kv.dim() != 2 or kv.shape != (q.shape[0], q.shape[2]):
        raise ValueError(
            f"mla_attention: q must be [tokens, heads, width] and kv [tokens, width], "
            f"got {tuple(q.shape)} and {tuple(kv.shape)}"
        )
    if not 0 < rank <= q.shape[2]:
        raise ValueError(f"mla_attention: rank {rank} outside 1..{q.shape[2]}")
    if q.dtype != kv.dtype:
        raise ValueError(f"mla_attention: q is {q.dtype} but kv is {kv.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"mla_attention: cu_seqlens must be 1-D with ≥ 2 entries, got {tuple(cu_seqlens.shape)}"
        )
    # The kernel reads keys at these bounds: check them rather than read outside the tensors (this reads
    # them back to the host: callers whose bounds are right by construction skip it).
    if not bounds:
        return
    if cu_seqlens[0] != 0 or cu_seqlens[-1] != q.shape[0] or bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError(
            f"mla_attention: cu_seqlens must rise from 0 to tokens={q.shape[0]}, got {cu_seqlens.tolist()}"
        )


def document_starts(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """The position [tokens] (int64) where each token's document starts."""
    bounds = cu_seqlens.to(dtype=torch.long)
    positions = torch.arange(tokens, device=bounds.device)
    return bounds[torch.searchsorted(bounds, positions, right=True) - 1]


def mla_attention_reference(
    q: torch.Tensor, kv: torch.Tensor, rank: int, scale: float, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """The plain torch computation: scaled dot-product attention of every head against the shared key, with a
    boolean [tokens, tokens] mask (causal within each document), softmax in float32 as SDPA does it."""
    _check(q, kv, rank, cu_seqlens)
    tokens = q.shape[0]
    starts = document_starts(cu_seqlens.to(q.device), tokens)
    positions = torch.arange(tokens, device=q.device)
    allowed = (positions[None, :] >= starts[:, None]) & (positions[None, :] <= positions[:, None])
    heads = q.shape[1]
    keys = kv[None, None].expand(1, heads, -1, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys, keys[..., :rank], attn_mask=allowed, scale=scale
    )
    return out[0].transpose(0, 1)


def mla_attention(
    q: torch.Tensor,
    kv: torch.Tensor,
    rank: int,
    scale: float,
    cu_seqlens: torch.Tensor,
    check_bounds: bool = True,
) -> torch.Tensor:
    """Attention of ``q`` against the shared key ``kv`` (values: its first ``rank`` columns) within the
    documents of ``cu_seqlens`` (see the module docstring): the Triton kernel when the backend says so
    (:func:`model_shapes.kernels.use_triton`) and no gradient is needed (it is forward-only), the torch
    reference otherwise. ``check_bounds=False`` skips reading ``cu_seqlens`` back to check it, for bounds
    that are right by construction (:func:`model_shapes.masks.documents_from_mask`)."""
    if needs_autograd(q, kv) or not use_triton(q, kv):
        return mla_attention_reference(q, kv, rank, scale, cu_seqlens)
    _check(q, kv, rank, cu_seqlens, bounds=check_bounds)
    from model_shapes.kernels._mla_triton import mla_forward

    starts = document_starts(cu_seqlens.to(q.device), q.shape[0]).to(torch.int32)
    return mla_forward(q.contiguous(), kv.contiguous(), rank, scale, starts)


__all__ = ["document_starts", "mla_attention", "mla_attention_reference"]
