"""Rotary position embeddings in the two layouts DeepSeek-VL2 uses.

Both rotate 2-D pairs of channels by the angle ``position · theta^(-2i/d)`` for pair i of a d-wide vector;
they differ only in which channels form a pair:

- half-split (GPT-NeoX / LLaMA "rotate half"): pair i is (x[i], x[i + d/2]); the MHA attention of tiny uses it
  on the whole head;
- consecutive pairs: pair i is (x[2i], x[2i + 1]); MLA (small, base) uses it on the rope part of each head.
  The official code reaches the same numbers by moving even channels before odd ones and then rotating halves;
  since queries and keys get the same permutation, their dot products are those of the consecutive-pair
  rotation.
"""

from __future__ import annotations

import torch


def rope_angles(
    position_ids: torch.Tensor, dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [batch, seq, dim/2] of the rotation angles for integer ``position_ids`` [batch, seq].

    The angles are computed in float32 (as the official code does) and cast to ``dtype``.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) / dim)
    )
    angles = position_ids.float()[..., None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool) -> torch.Tensor:
    """Rotate ``x`` [batch, seq, heads, dim] by the angles of :func:`rope_angles` ([batch, seq, dim/2]).

    ``interleaved`` selects consecutive pairs (2i, 2i+1); otherwise pairs are (i, i + dim/2).
    """
    cos = cos[:, :, None, :]
    sin = sin[:, :, None, :]
    if interleaved:
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
