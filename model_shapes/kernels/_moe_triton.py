"""The fused Triton kernels behind :func:`model_shapes.kernels.moe.moe_experts`.

The (token, slot) picks are sorted by expert and each expert's rows are padded to a whole number of BLOCK_M
tiles, so that every tile belongs to one expert (a tile → expert map; tiles past the last one are marked -1).
Two grouped GEMMs over those tiles, with no loop over experts: gate and up projections with the SwiGLU
product, then the down projection scaled by the routing weight, written to the pick's own row. The picks of a
token are then summed in float32. Accumulation is float32; where the reference rounds to the input dtype
(each projection, the activation, each expert's output) the kernels round too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_gate_ptr,
    w_up_ptr,
    hidden_ptr,
    slot_ptr,
    tile_expert_ptr,
    hidden_size,
    width,
    top_k,
    x_row_stride,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(1)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    valid = slot >= 0
    token = tl.where(valid, slot // top_k, 0).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + token[:, None] * x_row_stride + k[None, :]
    # w[expert, cols, k] read as a [BLOCK_K, BLOCK_N] tile: the transposed weight the product needs
    w_offsets = expert.to(tl.int64) * width * hidden_size + cols[None, :] * hidden_size + k[:, None]
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden_size, BLOCK_K):
        k_in = k + k0 < hidden_size
        x = tl.load(x_ptrs + k0, mask=valid[:, None] & k_in[None, :], other=0.0)
        w_mask = k_in[:, None] & (cols < width)[None, :]
        gate = tl.load(w_gate_ptr + w_offsets + k0, mask=w_mask, other=0.0)
        up = tl.load(w_up_ptr + w_offsets + k0, mask=w_mask, other=0.0)
        if UPCAST:  # the interpreter computes bfloat16 wrongly
            x, gate, up = x.to(tl.float32), gate.to(tl.float32), up.to(tl.float32)
        acc_gate = tl.dot(x, gate, acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(x, up, acc_up, input_precision=DOT_PRECISION)
    dtype = hidden_ptr.dtype.element_ty
    gate = acc_gate.to(dtype).to(tl.float32)
    activated = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
    hidden = activated * acc_up.to(dtype).to(tl.float32)
    tl.store(
        hidden_ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], hidden, mask=(cols < width)[None, :]
    )


@triton.jit
def _down_kernel(
    hidden_ptr,
    w_down_ptr,
    picked_ptr,
    slot_ptr,
    tile_expert_ptr,
    routing_weight_ptr,
    hidden_size,
    width,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(1)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    valid = slot >= 0
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    h_ptrs = hidden_ptr + rows.to(tl.int64)[:, None] * width + k[None, :]
    w_offsets = expert.to(tl.int64) * hidden_size * width + cols[None, :] * width + k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, width, BLOCK_K):
        k_in = k + k0 < width
        h = tl.load(h_ptrs + k0, mask=k_in[None, :], other=0.0)
        w = tl.load(
            w_down_ptr + w_offsets + k0, mask=k_in[:, None] & (cols < hidden_size)[None, :], other=0.0
        )
        if UPCAST:
            h, w = h.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
    routing_weight = tl.load(routing_weight_ptr + slot, mask=valid, other=0.0)
    out = acc.to(hidden_ptr.dtype.element_ty).to(tl.float32) * routing_weight[:, None]
    out_ptrs = picked_ptr + tl.where(valid, slot, 0).to(tl.int64)[:, None] * hidden_size + cols[None, :]
    tl.store(out_ptrs, out, mask=valid[:, None] & (cols < hidden_size)[None, :])


def _block(n: int, cap: int) -> int:
    """A power-of-two tile side for a dimension of ``n``: at least 16 (tl.dot's minimum), at most ``cap``."""
    return max(16, min(triton.next_power_of_2(n), cap))


def gemm_config(picks: int, experts: int, interpreted: bool) -> dict[str, int]:
    """Tile sizes and launch settings. The interpreter pays per program, so there tiles are as large as
    the problem; on a GPU the row tile follows the mean rows per expert (less padding for few tokens), at
    most 64 rows so that the gate/up kernel's two float32 accumulators fit in registers."""
    rows_per_expert = max(1, picks // experts)
    if interpreted:
        return {"BLOCK_M": _block(rows_per_expert, 64), "BLOCK_N": 256, "BLOCK_K": 256, "num_warps": 4}
    block_m = _block(rows_per_expert, 64)
    return {"BLOCK_M": block_m, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8 if block_m >= 64 else 4}


def moe_experts_triton(
    x: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """See :func:`model_shapes.kernels.moe.moe_experts`; weights stacked [E, I, H], [E, I, H], [E, H, I]."""
    tokens, top_k = index.shape
    experts, width, hidden_size = w_gate.shape
    picks = tokens * top_k
    if picks == 0:
        return torch.zeros_like(x)
    interpreted = triton.knobs.runtime.interpret
    config = gemm_config(picks, experts, interpreted)
    block_m, block_n, block_k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]

    # Sort the picks by expert and give each expert a run of whole tiles: pick i of expert e (in sorted order)
    # goes to row padded_start[e] + i - start[e]; rows left over hold slot -1.
    expert_of_pick = index.flatten()
    # scatter_add, not bincount: bincount reads the largest id back to the host, a sync on every call
    counts = torch.zeros(experts, dtype=torch.long, device=x.device).scatter_add_(
        0, expert_of_pick, torch.ones_like(expert_of_pick)
    )
    padded_counts = (counts + block_m - 1) // block_m * block_m
    padded_end = padded_counts.cumsum(0)
    order = expert_of_pick.argsort(stable=True)
    sorted_expert = expert_of_pick[order]
    rank = torch.arange(picks, device=x.device) - (counts.cumsum(0) - counts)[sorted_expert]
    row = (padded_end - padded_counts)[sorted_expert] + rank
    tiles = (picks + min(experts, picks) * (block_m - 1)) // block_m  # an upper bound, known without a sync
    slot = torch.full((tiles * block_m,), -1, dtype=torch.int32, device=x.device)
    slot[row] = order.to(torch.int32)
    tile_expert = torch.searchsorted(padded_end, torch.arange(tiles, device=x.device) * block_m, right=True)
    tile_expert = torch.where(tile_expert < experts, tile_expert, -1).to(torch.int32)

    x = x.contiguous()
    upcast = interpreted and x.dtype == torch.bfloat16
    precision = "ieee" if x.dtype == torch.float32 or upcast else "tf32"
    launch = {
        "UPCAST": upcast,
        "DOT_PRECISION": precision,
        "BLOCK_M": block_m,
        "BLOCK_K": block_k,
        "num_warps": config["num_warps"],
    }
    hidden = torch.empty((tiles * block_m, width), dtype=x.dtype, device=x.device)
    _gate_up_kernel[(triton.cdiv(width, block_n), tiles)](
        x,
        w_gate.contiguous(),
        w_up.contiguous(),
        hidden,
        slot,
        tile_expert,
        hidden_size,
        width,
        top_k,
        x.stride(0),
        BLOCK_N=block_n,
        **launch,
    )
    picked = torch.empty((picks, hidden_size), dtype=torch.float32, device=x.device)
    _down_kernel[(triton.cdiv(hidden_size, block_n), tiles)](
        hidden,
        w_down.contiguous(),
        picked,
        slot,
        tile_expert,
        weight.float().contiguous(),
        hidden_size,
        width,
        BLOCK_N=block_n,
        **launch,
    )
    return picked.view(tokens, top_k, hidden_size).sum(dim=1).to(x.dtype)
