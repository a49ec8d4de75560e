"""The MLA attention kernel (``model_shapes.kernels.mla``) in Triton's interpreter against its torch
reference: plain causal and packed documents, every dtype, head and token counts that do not fill the tiles;
the document form of the model's masks; and the MLA block itself with the Triton backend against the torch
one."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

import model_shapes
from model_shapes.attention import MultiHeadLatentAttention
from model_shapes.kernels import use_kernels
from model_shapes.kernels._mla_triton import Tile, mla_forward
from model_shapes.kernels.mla import document_starts, mla_attention, mla_attention_reference
from model_shapes.masks import attention_mask_4d, default_position_ids, documents_from_mask
from model_shapes.rope import rope_angles

TOY = model_shapes.load("toy")

# Largest |kernel - float64 reference| allowed, as (atol, rtol): float32 computes the same sums in another
# order; float16 and bfloat16 round the result once (about one unit in the last place of values up to ~4).
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# (tokens, heads, rank, rope, cu_seqlens). The interpreter's tiles are 128 rows (tokens × heads) by 64 keys.
CASES = {
    # one document; 45 tokens fill neither a 32-token query tile nor a 64-key block
    "causal": (45, 4, 32, 16, [0, 45]),
    # length-1 documents, a boundary inside a query tile (33) and one on it (64), a document across two tiles
    "packed": (77, 4, 32, 16, [0, 1, 2, 17, 18, 33, 40, 64, 76, 77]),
    # 20 heads: a second, partly filled head tile; rank and rope not powers of two
    "heads": (21, 20, 24, 8, [0, 5, 6, 21]),
}


def _inputs(
    tokens: int, heads: int, rank: int, rope: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(tokens * 1000 + heads)
    q = torch.randn(tokens, heads, rank + rope, generator=generator).to(dtype)
    kv = torch.randn(tokens, rank + rope, generator=generator).to(dtype)
    return q, kv


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_the_reference(case: str, dtype: torch.dtype) -> None:
    tokens, heads, rank, rope, bounds = CASES[case]
    q, kv = _inputs(tokens, heads, rank, rope, dtype)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    scale = (rank + rope) ** -0.5
    with use_kernels("triton"):
        got = mla_attention(q, kv, rank, scale, cu_seqlens)
    expected = mla_attention_reference(q.double(), kv.double(), rank, scale, cu_seqlens)
    assert got.dtype == dtype and got.shape == (tokens, heads, rank)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_kernel_with_gpu_sized_tiles(dtype: torch.dtype) -> None:
    # 16 rows (4 tokens × 4 heads) and 16 keys a step, as on a GPU: many key steps, blocks on a diagonal or a
    # document start (masked) and blocks inside every row's document (not masked).
    tokens, heads, rank, rope, bounds = CASES["packed"]
    q, kv = _inputs(tokens, heads, rank, rope, dtype)
    cu_seqlens = torch.tensor(bounds)
    starts = document_starts(cu_seqlens, tokens).to(torch.int32)
    got = mla_forward(q, kv, rank, 0.2, starts, Tile(block_m=16, block_n=16, num_warps=4, num_stages=1))
    expected = mla_attention_reference(q.double(), kv.double(), rank, 0.2, cu_seqlens)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=rtol)


def test_reference_attends_within_documents_only() -> None:
    # Each token's output from the packed call equals that of its document run alone.
    tokens, heads, rank, rope, bounds = CASES["packed"]
    q, kv = _inputs(tokens, heads, rank, rope, torch.float64)
    packed = mla_attention_reference(q, kv, rank, 0.2, torch.tensor(bounds))
    for start, end in itertools.pairwise(bounds):
        alone = mla_attention_reference(
            q[start:end], kv[start:end], rank, 0.2, torch.tensor([0, end - start])
        )
        torch.testing.assert_close(packed[start:end], alone, atol=1e-12, rtol=1e-12)


def test_dispatcher_runs_the_reference_under_torch() -> None:
    tokens, heads, rank, rope, bounds = CASES["packed"]
    q, kv = _inputs(tokens, heads, rank, rope, torch.float32)
    cu_seqlens = torch.tensor(bounds)
    with use_kernels("torch"):
        got = mla_attention(q, kv, rank, 0.2, cu_seqlens)
    assert torch.equal(got, mla_attention_reference(q, kv, rank, 0.2, cu_seqlens))


@pytest.mark.parametrize(
    "q_shape, kv_shape, bounds",
    [
        ((6, 2, 12), (6, 12), [0, 3, 7]),  # past the tokens
        ((6, 2, 12), (6, 12), [1, 6]),  # not from 0
        ((6, 2, 12), (6, 12), [0, 4, 3, 6]),  # falling
        ((6, 2, 12), (5, 12), [0, 6]),  # kv's tokens
        ((6, 2, 12), (6, 10), [0, 6]),  # kv's width
    ],
)
def test_malformed_inputs_are_refused(
    q_shape: tuple[int, ...], kv_shape: tuple[int, ...], bounds: list[int]
) -> None:
    with use_kernels("triton"), pytest.raises(ValueError, match="mla_attention"):
        mla_attention(torch.zeros(q_shape), torch.zeros(kv_shape), 8, 0.2, torch.tensor(bounds))


def test_document_starts() -> None:
    starts = document_starts(torch.tensor([0, 1, 4, 6]), 6)
    assert starts.tolist() == [0, 1, 1, 1, 4, 4]


def test_importing_the_model_does_not_import_triton() -> None:
    code = "import sys, model_shapes.attention, model_shapes.kernels.mla; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------------
# Masks as documents


def _documents_mask(cu_seqlens: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    mask = attention_mask_4d(None, cu_seqlens, batch, seq, torch.device("cpu"))
    assert mask is not None
    return mask


@pytest.mark.parametrize(
    "attention_mask, cu_seqlens, expected",
    [
        (None, None, [0, 5, 10]),
        (None, [0, 2, 5, 6, 10], [0, 2, 5, 6, 10]),
        # left padding: one document per padding token, one for the real tokens
        ([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], None, [0, 1, 2, 5, 10]),
        # padding and packing together: the real tokens of a row split at the document bound
        ([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], [0, 3, 5, 10], [0, 1, 3, 5, 10]),
    ],
)
def test_documents_from_mask(
    attention_mask: list[list[int]] | None, cu_seqlens: list[int] | None, expected: list[int]
) -> None:
    batch, seq = 2, 5
    mask = attention_mask_4d(
        None if attention_mask is None else torch.tensor(attention_mask),
        None if cu_seqlens is None else torch.tensor(cu_seqlens),
        batch,
        seq,
        torch.device("cpu"),
    )
    documents = documents_from_mask(mask, batch, seq, torch.device("cpu"))
    assert documents is not None and documents.tolist() == expected
    if mask is not None:  # the documents allow exactly what the mask allows
        assert torch.equal(_documents_mask(documents, batch, seq), mask)


def test_right_padding_has_no_documents() -> None:
    mask = attention_mask_4d(torch.tensor([[1, 1, 1, 0, 1]]), None, 1, 5, torch.device("cpu"))
    assert documents_from_mask(mask, 1, 5, torch.device("cpu")) is None


# ----------------------------------------------------------------------------------------------------
# The MLA block (toy shape: q-LoRA, rank 32, rope 8, 4 heads) with the kernel and without


@pytest.mark.parametrize("layout", ["causal", "packed", "left_padded", "right_padded"])
def test_mla_block_with_the_kernel_equals_torch(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counted(q: torch.Tensor, *args: object, **options: bool) -> torch.Tensor:
        calls.append(q.shape[0])
        return mla_attention(q, *args, **options)

    monkeypatch.setattr(model_shapes.attention, "mla_attention", counted)
    torch.manual_seed(0)
    shape = TOY.language
    block = MultiHeadLatentAttention(shape).eval()
    for name, parameter in block.named_parameters():  # norms around 1, projections small
        torch.nn.init.normal_(parameter, mean=1.0 if "layernorm" in name else 0.0, std=0.2)
    batch, seq = 2, 24
    attention_mask = cu_seqlens = None
    if layout == "packed":
        cu_seqlens = torch.tensor([0, 1, 9, 24, 37, 38, 48])
    elif layout == "left_padded":
        attention_mask = (torch.arange(seq) >= torch.tensor([[5], [0]])).long()
    elif layout == "right_padded":
        attention_mask = (torch.arange(seq) < torch.tensor([[19], [24]])).long()
    mask = attention_mask_4d(attention_mask, cu_seqlens, batch, seq, torch.device("cpu"))
    positions = default_position_ids(batch, seq, torch.device("cpu"), cu_seqlens)
    cos, sin = rope_angles(positions, shape.qk_rope_head_dim, shape.rope_theta, torch.float32)
    x = torch.randn(batch, seq, shape.hidden_size)
    with torch.no_grad():
        with use_kernels("torch"):
            expected = block(x, cos, sin, mask)
        with use_kernels("triton"):
            got = block(x, cos, sin, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Right padding is not expressible as documents: attention stays in torch there.
    assert calls == ([] if layout == "right_padded" else [batch * seq])
