"""The RMSNorm kernel (``model_shapes.kernels.rmsnorm``) in Triton's interpreter against its torch reference,
with and without the fused residual add, in every dtype and for a strided input; the backend choice; and
the model's RMSNorm against the formula it had before the kernel."""

from __future__ import annotations

import pytest
import torch

import model_shapes.kernels._rmsnorm_triton as rmsnorm_triton
from model_shapes.kernels import use_kernels
from model_shapes.kernels.rmsnorm import rms_norm, rms_norm_reference
from model_shapes.norm import RMSNorm

EPS = 1e-6

# (atol, rtol) for kernel against reference. float32 sums the squares in another order; float16 rounds at
# the same points as the reference (equal in practice). The interpreter casts to bfloat16 by truncation where
# a GPU rounds to nearest: one unit in the last place (2^-7 relative) at each of the two rounding points.
TOLERANCE = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (2**-6, 2**-6),
}


def _inputs(dtype: torch.dtype, shape: tuple[int, ...] = (5, 7, 48)) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(shape, generator=generator).to(dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=generator)).to(dtype)
    return x, residual, weight


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_kernel_equals_the_reference(dtype: torch.dtype, with_residual: bool) -> None:
    # 35 rows of 48: neither fills the kernel's power-of-two tile
    x, residual, weight = _inputs(dtype)
    residual = residual if with_residual else None
    got, got_sum = rmsnorm_triton.rms_norm_triton(x, weight, EPS, residual)
    expected, expected_sum = rms_norm_reference(x, weight, EPS, residual)
    atol, rtol = TOLERANCE[dtype]
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    if residual is None:
        assert got_sum is None and expected_sum is None
    elif dtype == torch.bfloat16:
        torch.testing.assert_close(got_sum, expected_sum, atol=0.0, rtol=2**-7)
    else:
        assert torch.equal(got_sum, expected_sum)


def test_strided_rows_and_a_float32_weight_on_half_inputs() -> None:
    # as kv_a_layernorm reads the first `rank` columns of a wider projection
    wide, _, _ = _inputs(torch.float16, (3, 4, 40))
    x = wide[..., :32]
    weight = 1 + 0.1 * torch.randn(32)
    got, _ = rmsnorm_triton.rms_norm_triton(x, weight, EPS)
    expected, _ = rms_norm_reference(x, weight, EPS)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the Triton path (which still runs)."""
    calls: list[int] = []
    kernel = rmsnorm_triton.rms_norm_triton

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(rmsnorm_triton, "rms_norm_triton", counted)
    return calls


def test_backend_choice(kernel_calls: list[int]) -> None:
    x, residual, weight = _inputs(torch.float32)
    expected = rms_norm_reference(x, weight, EPS, residual)
    got = rms_norm(x, weight, EPS, residual)  # "auto" on the CPU: the reference, exactly
    assert kernel_calls == [] and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    with use_kernels("torch"):
        rms_norm(x, weight, EPS)
    assert kernel_calls == []
    with use_kernels("triton"):
        rms_norm(x, weight, EPS, residual)
        assert kernel_calls == [1]
        rms_norm(x, weight.requires_grad_(), EPS)  # autograd needs the reference
        assert kernel_calls == [1]
        with torch.no_grad():
            rms_norm(x, weight, EPS)
    assert kernel_calls == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_module_keeps_the_official_formula_bit_for_bit(dtype: torch.dtype) -> None:
    x, residual, weight = _inputs(dtype)
    norm = RMSNorm(x.shape[-1], EPS).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)

    def official(h: torch.Tensor) -> torch.Tensor:
        h32 = h.float()
        return norm.weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + EPS)).to(dtype)

    assert torch.equal(norm(x), official(x))
    normed, summed = norm(x, residual=residual)
    assert torch.equal(summed, x + residual)
    assert torch.equal(normed, official(x + residual))
