"""The Triton kernel behind :func:`model_shapes.kernels.mla.mla_attention`; imported only when it runs.

One program owns a tile of BLOCK_T query tokens × BLOCK_H heads, laid out as the BLOCK_T · BLOCK_H rows of
one M tile (row = token-major, head-minor): every head attends the same single key head, so each key block
loaded serves all of them. Each key block is read once as [latent | rope]: the latent part is the first
operand of both QKᵀ (the rope part adds a second dot) and PV. The key loop runs only over
[start of the first query's document, last query token]; blocks that some row may not see all of are masked
per row (key ≥ own document start and key ≤ own token). Softmax is online in float32 (base 2, the scale
folded into log2(e)); accumulation in float32.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl


@triton.jit
def _mla_forward(
    q_ptr,
    kv_ptr,
    out_ptr,
    start_ptr,
    tokens,
    heads,
    stride_q_token,
    stride_q_head,
    stride_kv_token,
    stride_out_token,
    stride_out_head,
    qk_scale_log2,
    RANK: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    BLOCK_M: tl.constexpr = BLOCK_T * BLOCK_H
    # Later query tiles have more keys: start them first so that short ones fill the tail.
    first_token = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_T
    rows = tl.arange(0, BLOCK_M)
    token = first_token + rows // BLOCK_H
    head = tl.program_id(1) * BLOCK_H + rows % BLOCK_H
    row_ok = (token < tokens) & (head < heads)
    doc_start = tl.load(start_ptr + token, mask=token < tokens, other=0)

    latent_cols = tl.arange(0, BLOCK_R)
    rope_cols = tl.arange(0, BLOCK_P)
    latent_ok = latent_cols < RANK
    rope_ok = rope_cols < ROPE
    q_rows = q_ptr + token[:, None] * stride_q_token + head[:, None] * stride_q_head
    q_latent = tl.load(q_rows + latent_cols[None, :], mask=row_ok[:, None] & latent_ok[None, :], other=0.0)
    q_rope = tl.load(q_rows + RANK + rope_cols[None, :], mask=row_ok[:, None] & rope_ok[None, :], other=0.0)
    if UPCAST:
        q_latent = q_latent.to(tl.float32)
        q_rope = q_rope.to(tl.float32)

    row_max = tl.full([BLOCK_M], -float("inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    # Document starts never decrease along the tokens, so the tile's first token has the earliest one.
    key_lo = tl.load(start_ptr + first_token)
    key_hi = tl.minimum(first_token + BLOCK_T, tokens)
    # From the last token's document start on, keys lie in every row's document.
    key_full_lo = tl.load(start_ptr + key_hi - 1)
    for key_first in range(key_lo, key_hi, BLOCK_N):
        keys = key_first + tl.arange(0, BLOCK_N)
        key_ok = keys < key_hi
        kv_rows = kv_ptr + keys[:, None] * stride_kv_token
        latent = tl.load(kv_rows + latent_cols[None, :], mask=key_ok[:, None] & latent_ok[None, :], other=0.0)
        k_rope = tl.load(
            kv_rows + RANK + rope_cols[None, :], mask=key_ok[:, None] & rope_ok[None, :], other=0.0
        )
        if UPCAST:
            latent = latent.to(tl.float32)
            k_rope = k_rope.to(tl.float32)
        scores = tl.dot(q_latent, tl.trans(latent), input_precision=PRECISION) * qk_scale_log2
        scores += tl.dot(q_rope, tl.trans(k_rope), input_precision=PRECISION) * qk_scale_log2
        # Mask only blocks that cross a document start or the diagonal for some row of the tile. Besides
        # saving work, the branch keeps Triton (3.6/3.7, sm_90) from seeing the score dots as chained into PV:
        # it then spreads their 64 rows over both warp groups (warps 4 × 2) instead of computing them twice
        # (8 × 1). Scaling before adding keeps the two dots from being fused into one chain as well.
        if (key_first < key_full_lo) | (key_first + BLOCK_N > first_token + 1):
            allowed = (keys[None, :] >= doc_start[:, None]) & (keys[None, :] <= token[:, None])
            scores = tl.where(allowed, scores, -float("inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # A row with no allowed key yet keeps max -inf; shifting by 0 then gives exp2(-inf) = 0, not NaN.
        shift = tl.where(new_max == -float("inf"), 0.0, new_max)
        probs = tl.exp2(scores - shift[:, None])
        rescale = tl.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = tl.dot(probs.to(latent.dtype), latent, acc * rescale[:, None], input_precision=PRECISION)
        row_max = new_max

    out = acc / row_sum[:, None]
    out_rows = out_ptr + token[:, None] * stride_out_token + head[:, None] * stride_out_head
    tl.store(
        out_rows + latent_cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & latent_ok[None, :],
    )


def _power_of_two(n: int, least: int = 16) -> int:
    """The smallest power of two ≥ max(n, least) (tl.dot needs every dimension ≥ 16)."""
    return max(least, triton.next_power_of_2(n))


@dataclasses.dataclass(frozen=True)
class Tile:
    """Launch shape: rows (query tokens × heads) and keys per program step, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_tile(q: torch.Tensor) -> Tile:
    """The tile for ``q``'s device and dtype."""
    if not q.is_cuda:
        return Tile(128, 64, 4, 1)  # Triton's interpreter pays per program: few, large tiles
    if q.dtype == torch.float32:
        # Not a speed path: float32 tiles of width 576 must fit shared memory (72 KiB compiled for sm_90).
        return Tile(16, 16, 4, 1)
    major, minor = torch.cuda.get_device_capability(q.device)
    if major >= 9:
        # The [64, 512] float32 accumulator takes half the registers of 8 warps. Compiled for sm_90 at rank
        # 512 and rope 64: 255 registers, no spills, 224 of the 227 KiB of shared memory (the query tile and
        # two buffered 64-key [latent | rope] tiles); 32 keys a step make ptxas serialise the wgmma.
        return Tile(64, 64, 8, 2)
    # Less shared memory: compiled (not run) for sm_80 in 112 of 163 KiB, for sm_86 in 55 of 99 KiB.
    return Tile(64, 32, 8, 2) if (major, minor) == (8, 0) else Tile(32, 16, 4, 2)


def mla_forward(
    q: torch.Tensor,
    kv: torch.Tensor,
    rank: int,
    scale: float,
    doc_start: torch.Tensor,
    tile: Tile | None = None,
) -> torch.Tensor:
    """Launch the kernel on contiguous q [tokens, heads, rank + rope], kv [tokens, rank + rope] and the
    int32 document start of every token, with ``tile`` (default: :func:`default_tile`); returns
    [tokens, heads, rank] in q's dtype."""
    tokens, heads, width = q.shape
    rope = width - rank
    out = torch.empty((tokens, heads, rank), dtype=q.dtype, device=q.device)
    if tokens == 0 or heads == 0:
        return out
    tile = tile or default_tile(q)
    block_h = min(_power_of_two(heads, least=1), 16, tile.block_m)
    block_t = tile.block_m // block_h
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(heads, block_h))
    _mla_forward[grid](
        q,
        kv,
        out,
        doc_start,
        tokens,
        heads,
        q.stride(0),
        q.stride(1),
        kv.stride(0),
        out.stride(0),
        out.stride(1),
        scale * 1.4426950408889634,  # log2(e): softmax in base 2
        # Compile-time widths: column masks that are always true (512, 64) vanish, so loads stay vectorised
        # and the pipeliner can prefetch key tiles asynchronously.
        RANK=rank,
        ROPE=rope,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_N=tile.block_n,
        BLOCK_R=_power_of_two(rank),
        BLOCK_P=_power_of_two(rope),
        # bf16 arithmetic is wrong in Triton's interpreter: compute in float32 there.
        UPCAST=q.dtype == torch.bfloat16 and not q.is_cuda,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )
    return out
