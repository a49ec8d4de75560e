"""The fused MoE kernels (``model_shapes.kernels.moe``) in Triton's interpreter against the torch reference
loop: every dtype, an expert without tokens, every token on one expert, top-k above 1, token counts that do
not fill a tile; the stacked-weight cache; the backend choice; and the toy language model with every kernel
against the torch backend."""

from __future__ import annotations

import dataclasses
from types import ModuleType

import pytest
import torch

import model_shapes
import model_shapes.kernels._moe_triton as moe_triton
import model_shapes.kernels._rmsnorm_triton as rmsnorm_triton
import model_shapes.language as language
from model_shapes.kernels import use_kernels
from model_shapes.kernels.moe import StackedExperts, moe_experts, moe_experts_reference
from model_shapes.language import CausalLM

TOY = model_shapes.load("toy")
EXPERTS, HIDDEN, WIDTH = 8, 64, 48  # WIDTH is not a power of two: the tiles along it are partly filled

# (atol, rtol) for kernel against reference. float32 sums in another order; float16 rounds at the same points
# as the reference. The interpreter casts to bfloat16 by truncation where a GPU rounds to nearest, at four
# rounding points (projections, activation, expert output): a few units in the last place.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (4 * 2**-7, 4 * 2**-7),
}


def _routing(case: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight) as the router gives them: distinct experts per token, float32 weights."""
    if case == "spread":  # 13 tokens, top-2, expert 5 gets no token
        scores = torch.rand(13, EXPERTS, generator=generator)
        scores[:, 5] = -1.0
        index = scores.topk(2, dim=-1).indices
    elif case == "one_expert":  # 21 tokens, top-1, all on expert 3
        index = torch.full((21, 1), 3)
    else:  # "top3": 6 tokens, top-3, several experts without tokens
        index = torch.rand(6, EXPERTS, generator=generator).topk(3, dim=-1).indices
    return index, torch.rand(index.shape, generator=generator)


def _weights(
    dtype: torch.dtype, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gate, up = (torch.randn(EXPERTS, WIDTH, HIDDEN, generator=generator) * HIDDEN**-0.5 for _ in range(2))
    down = torch.randn(EXPERTS, HIDDEN, WIDTH, generator=generator) * WIDTH**-0.5
    return gate.to(dtype), up.to(dtype), down.to(dtype)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", ["spread", "one_expert", "top3"])
def test_kernel_equals_the_reference(case: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    index, weight = _routing(case, generator)
    x = torch.randn(len(index), HIDDEN, generator=generator).to(dtype)
    gate, up, down = _weights(dtype, generator)
    got = moe_triton.moe_experts_triton(x, index, weight, gate, up, down)
    expected = moe_experts_reference(x, index, weight, gate, up, down)
    atol, rtol = TOLERANCE[dtype]
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def test_tile_sizes_follow_the_rows_per_expert() -> None:
    assert moe_triton.gemm_config(26, 8, interpreted=True)["BLOCK_M"] == 16
    assert moe_triton.gemm_config(4096 * 6, 64, interpreted=False)["BLOCK_M"] == 64
    assert moe_triton.gemm_config(64 * 6, 64, interpreted=False)["BLOCK_M"] == 16


def test_stacked_weights_are_cached_until_a_parameter_changes() -> None:
    experts = [torch.nn.Linear(4, 3, bias=False) for _ in range(2)]
    weights = [e.weight for e in experts]
    stack = StackedExperts()
    first = stack.get(weights, weights, weights)
    assert torch.equal(first[0], torch.stack(weights))
    assert stack.get(weights, weights, weights) is first
    with torch.no_grad():
        experts[1].weight.mul_(2.0)  # in place, as load_state_dict and optimizers do
    second = stack.get(weights, weights, weights)
    assert second is not first and torch.equal(second[1][1], experts[1].weight)
    experts[0].weight = torch.nn.Parameter(torch.zeros(3, 4))  # replaced, as load_state_dict(assign=True)
    weights = [e.weight for e in experts]
    assert torch.equal(stack.get(weights, weights, weights)[2][0], torch.zeros(3, 4))
    with torch.inference_mode():  # a model built for inference: its tensors have no version counter
        frozen = [torch.ones(3, 4) for _ in range(2)]
    assert torch.equal(stack.get(frozen, frozen, frozen)[0], torch.ones(2, 3, 4))


def _counted(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> list[int]:
    """A list that grows by one at each call of ``module.name`` (which still runs)."""
    calls: list[int] = []
    kernel = getattr(module, name)

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counted(monkeypatch, moe_triton, "moe_experts_triton")
    generator = torch.Generator().manual_seed(2)
    index, weight = _routing("spread", generator)
    x = torch.randn(len(index), HIDDEN, generator=generator)
    per_expert = [list(w) for w in _weights(torch.float32, generator)]
    expected = moe_experts_reference(x, index, weight, *per_expert)
    assert torch.equal(moe_experts(x, index, weight, *per_expert), expected)  # "auto" on the CPU
    with use_kernels("torch"):
        moe_experts(x, index, weight, *per_expert)
    assert calls == []
    stack = StackedExperts()
    with use_kernels("triton"):
        got = moe_experts(x, index, weight, *per_expert, stack)
        assert calls == [1]
        moe_experts(x, index, weight, *per_expert[:2], [w.requires_grad_() for w in per_expert[2]])
        frozen = [[w.detach() for w in group] for group in per_expert]
        trained_router = moe_experts(x, index, weight.clone().requires_grad_(), *frozen)
    assert calls == [1]  # autograd needs the reference, for the router's weights too
    assert trained_router.grad_fn is not None
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_toy_language_model_with_the_kernels_equals_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # float16: every kernel runs on its tensor-core path; two layers (dense, MoE) keep the interpreter quick
    calls = {"moe": _counted(monkeypatch, moe_triton, "moe_experts_triton")}
    calls["rmsnorm"] = _counted(monkeypatch, rmsnorm_triton, "rms_norm_triton")
    shape = dataclasses.replace(TOY.language, num_hidden_layers=2)
    torch.manual_seed(3)
    model = CausalLM(shape)
    for name, parameter in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight"):
                parameter.normal_(1.0, 0.1)
            else:
                parameter.normal_(0.0, 0.1)  # large enough for the router to spread the tokens
    model = model.half().eval()
    embeds = torch.randn(2, 9, shape.hidden_size).half()
    with torch.no_grad(), use_kernels("torch"):
        expected = model(embeds)
    derived = _counted(monkeypatch, language, "documents_from_mask")
    with torch.no_grad(), use_kernels("triton"):
        got = model(embeds)
    assert len(derived) == 1  # the mask becomes documents once per forward, not once per layer
    # the final norm, and per layer: input, q_a, kv_a, post-attention norms; one MoE layer
    assert {name: len(made) for name, made in calls.items()} == {
        "moe": 1,
        "rmsnorm": 1 + 4 * shape.num_hidden_layers,
    }
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)
