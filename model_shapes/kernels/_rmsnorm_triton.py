"""The Triton kernel behind :func:`model_shapes.kernels.rmsnorm.rms_norm`: a block of rows per program, the
whole row in one tile, the optional residual add and the norm in one pass over memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements one program holds (rows × padded row width): short rows share a program, a long row is alone.
_ELEMENTS_PER_PROGRAM = 8192


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    sum_ptr,
    rows,
    dim,
    x_row_stride,
    residual_row_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)[:, None]
    col = tl.arange(0, BLOCK_DIM)[None, :]
    mask = (row < rows) & (col < dim)
    row = row.to(tl.int64)
    in_dtype = x_ptr.dtype.element_ty
    # Loaded values are upcast at once (the interpreter computes bfloat16 wrongly); rounding to the input
    # dtype where the reference does keeps the results equal.
    h = tl.load(x_ptr + row * x_row_stride + col, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_row_stride + col, mask=mask, other=0.0)
        h = (h + residual.to(tl.float32)).to(in_dtype)
        tl.store(sum_ptr + row * dim + col, h, mask=mask)
        h = h.to(tl.float32)
    mean_square = tl.sum(h * h, axis=1) / dim
    normed = (h * tl.rsqrt(mean_square + eps)[:, None]).to(in_dtype).to(tl.float32)
    weight = tl.load(weight_ptr + col, mask=col < dim, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + col, weight * normed, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as [rows, dim] with unit stride along dim (a view when possible)."""
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See :func:`model_shapes.kernels.rmsnorm.rms_norm`; output dtype as torch's promotion of weight × x."""
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual {tuple(residual.shape)} {residual.dtype} must match x {tuple(x.shape)} {x.dtype}"
        )
    dim = x.shape[-1]
    x_rows = _rows(x)
    residual_rows = x_rows if residual is None else _rows(residual)
    rows = x_rows.shape[0]
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    summed = None if residual is None else torch.empty_like(x, memory_format=torch.contiguous_format)
    block_dim = triton.next_power_of_2(dim)
    block_rows = max(1, min(triton.next_power_of_2(rows), _ELEMENTS_PER_PROGRAM // block_dim))
    _rms_norm_kernel[(triton.cdiv(rows, block_rows),)](
        x_rows,
        residual_rows,
        weight.contiguous(),
        out,
        out if summed is None else summed,
        rows,
        dim,
        x_rows.stride(0),
        residual_rows.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_DIM=block_dim,
        num_warps=min(16, max(1, block_rows * block_dim // 512)),
    )
    return out, summed
