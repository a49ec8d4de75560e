"""RMSNorm, optionally fused with the residual add before it: the Triton kernel's dispatcher and the plain
torch reference it must equal (the official ``DeepseekV2RMSNorm``: statistics in float32, result cast back to
the input dtype, then multiplied by the weight)."""

from __future__ import annotations

import torch

from model_shapes.kernels import needs_autograd, use_triton


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rmsnorm(h), h)`` with h = x + residual added in the input dtype; ``(rmsnorm(x), None)`` without
    a residual."""
    h = x if residual is None else x + residual
    h32 = h.float()
    h32 = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h32.to(h.dtype), None if residual is None else h


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of ``x`` (or of ``x + residual``, also returned as the new residual stream) over the last dim.

    Runs the Triton kernel when :func:`~model_shapes.kernels.use_triton` says so and no gradient is needed
    (the kernel is forward-only), the reference otherwise.
    """
    tensors = (x, weight) if residual is None else (x, weight, residual)
    if use_triton(*tensors) and not needs_autograd(*tensors):
        from model_shapes.kernels._rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    return rms_norm_reference(x, weight, eps, residual)


__all__ = ["rms_norm", "rms_norm_reference"]
