"""RMSNorm as the DeepSeek-V2 language model computes it: statistics in float32, scaled in the input dtype."""

from __future__ import annotations

from typing import overload

import torch
from torch import nn

from model_shapes.kernels.rmsnorm import rms_norm


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, with the mean taken in float32 and the result cast back to the input
    dtype before the learned weight multiplies it, as the official ``DeepseekV2RMSNorm``.

    Given a ``residual``, it first forms h = x + residual (in the input dtype, as the model's
    ``x = x + attn``) and returns ``(norm(h), h)``: one pass over memory with the Triton kernel
    (:mod:`model_shapes.kernels`).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    @overload
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        normed, summed = rms_norm(x, self.weight, self.eps, residual)
        return normed if summed is None else (normed, summed)
