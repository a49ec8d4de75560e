"""Blocks of the DeepSeek-VL2 model against a direct reading of the spec (§2 layout, §5 RoPE and MoE gate):
RoPE layouts, pixel-shuffle order, visual-token placement, routers, masks for padding and packing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import model_shapes
from model_shapes.adaptor import Projector, visual_token_index
from model_shapes.masks import attention_mask_4d, default_position_ids, document_ids
from model_shapes.moe import Router
from model_shapes.rope import apply_rope, rope_angles
from pipeline.layout import image_layout

TOY = model_shapes.load("toy")
T = 14  # adaptor tokens per side of a tile: ceil(27 / 2)


# ----------------------------------------------------------------------------------------------------
# RoPE (spec §5: consecutive pairs for MLA, half-split for tiny's MHA)


def _rotate_pairs(x: torch.Tensor, position: int, pairs: list[tuple[int, int]], theta: float) -> torch.Tensor:
    """Rotate each (a, b) channel pair i by position · theta^(-2i/d), one pair at a time."""
    d = x.shape[-1]
    out = x.clone()
    for i, (a, b) in enumerate(pairs):
        angle = position * theta ** (-2 * i / d)
        out[..., a] = x[..., a] * math.cos(angle) - x[..., b] * math.sin(angle)
        out[..., b] = x[..., a] * math.sin(angle) + x[..., b] * math.cos(angle)
    return out


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_rotates_the_documented_pairs(interleaved: bool) -> None:
    d, positions = 8, [0, 1, 5, 37]
    x = torch.randn(1, len(positions), 2, d, dtype=torch.float64)
    cos, sin = rope_angles(torch.tensor([positions]), d, 10000.0, torch.float64)
    got = apply_rope(x, cos, sin, interleaved=interleaved)
    pairs = (
        [(2 * i, 2 * i + 1) for i in range(d // 2)]
        if interleaved
        else [(i, i + d // 2) for i in range(d // 2)]
    )
    for s, position in enumerate(positions):
        expected = _rotate_pairs(x[0, s], position, pairs, 10000.0)
        # the angles are computed in float32, as the official code does
        torch.testing.assert_close(got[0, s], expected, rtol=0, atol=1e-6)


def test_consecutive_pairs_equal_the_official_permute_then_rotate_half() -> None:
    # The official MLA code reorders each rope vector to (evens, odds), then rotates halves: dot products of a
    # query and a key are those of the consecutive-pair rotation.
    d = 8
    q, k = torch.randn(2, 1, 3, 1, d, dtype=torch.float64).unbind(0)
    cos, sin = rope_angles(torch.tensor([[0, 4, 9]]), d, 10000.0, torch.float64)
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    ours = (apply_rope(q, cos, sin, interleaved=True) * apply_rope(k, cos, sin, interleaved=True)).sum(-1)
    official = (
        apply_rope(q[..., perm], cos, sin, interleaved=False)
        * apply_rope(k[..., perm], cos, sin, interleaved=False)
    ).sum(-1)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# adaptor: 27 → 28 zero pad, 2×2 unfold in (c, dy, dx) order


def test_projector_unfold_order_and_zero_padding() -> None:
    projector = Projector(TOY.projector)
    channels, side = TOY.projector.input_dim, TOY.vision.grid
    grid = (
        torch.arange(side)[:, None, None] * 100_000 + torch.arange(side)[None, :, None] * 100
    ) + torch.arange(channels)[None, None, :]
    grid = grid.float()
    seen = []
    projector.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        projector(grid.reshape(1, side * side, channels))
    tokens = seen[0][0]  # [t², 4·channels]
    assert tokens.shape == (T * T, 4 * channels)
    for i, j in [(0, 0), (0, 13), (5, 7), (13, 0), (13, 13)]:
        for c in (0, 1, channels - 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    row, col = 2 * i + dy, 2 * j + dx
                    expected = grid[row, col, c] if row < side and col < side else 0.0
                    assert tokens[i * T + j, c * 4 + dy * 2 + dx] == expected


def test_projector_is_linear_gelu_linear() -> None:
    projector = Projector(TOY.projector)
    x = torch.randn(2, 729, TOY.projector.input_dim)
    first, second = projector.layers[0], projector.layers[2]
    padded = torch.nn.functional.pad(x.view(2, 27, 27, -1).permute(0, 3, 1, 2), (0, 1, 0, 1))
    unfolded = torch.nn.functional.unfold(padded, 2, stride=2).transpose(1, 2)
    expected = second(torch.nn.functional.gelu(first(unfolded), approximate="none"))
    torch.testing.assert_close(projector(x), expected)
    assert [name for name, _ in projector.state_dict().items()] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
    ]


# ----------------------------------------------------------------------------------------------------
# visual-token placement (spec §2 "Embedding assembly")


def _spec_order(width_tiles: int, height_tiles: int) -> list[tuple[str, int, int]]:
    """(kind, tile, token) per visual position, written out from the spec's wording."""
    order: list[tuple[str, int, int]] = []
    for r in range(T):  # global view: 14 rows of 14 tokens, each row then a newline
        order += [("token", 0, r * T + c) for c in range(T)] + [("newline", -1, -1)]
    order.append(("separator", -1, -1))
    for row in range(height_tiles * T):  # local tiles stitched into one grid, each grid row then a newline
        for col in range(width_tiles * T):
            tile = 1 + (row // T) * width_tiles + col // T
            order.append(("token", tile, (row % T) * T + col % T))
        order.append(("newline", -1, -1))
    return order


@pytest.mark.parametrize("grid", [(1, 1), (2, 1), (1, 3), (3, 2)])
def test_visual_token_index_follows_the_spec_and_the_pipeline_layout(grid: tuple[int, int]) -> None:
    width_tiles, height_tiles = grid
    index = visual_token_index(width_tiles, height_tiles, T).numpy()
    n_features = (1 + width_tiles * height_tiles) * T * T
    decoded = [
        ("newline", -1, -1) if i == n_features else ("separator", -1, -1) if i == n_features + 1
        else ("token", int(i) // (T * T), int(i) % (T * T))
        for i in index
    ]  # fmt: skip
    assert decoded == _spec_order(width_tiles, height_tiles)
    pipeline_index = image_layout(grid, TOY).feature_index()
    ours = np.where(index == n_features, -1, np.where(index == n_features + 1, -2, index))
    np.testing.assert_array_equal(ours, pipeline_index)


def _coded_model() -> tuple[model_shapes.DeepseekVL2, list[torch.Tensor]]:
    """A toy model whose tiles encode to codes: channel 0 = 1000·slot + token, the slot read from the tile's
    pixels; newline = -1 and separator = -2 in channel 0. Also returns the list of encoder calls."""
    torch.manual_seed(0)
    model = model_shapes.build_model(TOY)
    calls: list[torch.Tensor] = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(pixels)
        tokens = torch.zeros(len(pixels), T * T, TOY.language.hidden_size)
        tokens[..., 0] = pixels[:, 0, 0, 0, None] * 1000 + torch.arange(T * T)
        return tokens

    model.encode_tiles = encode  # type: ignore[method-assign]
    with torch.no_grad():
        model.image_newline.fill_(-1.0)
        model.view_seperator.fill_(-2.0)
    return model, calls


def test_embedding_assembly_places_global_separator_local_in_order() -> None:
    model, calls = _coded_model()
    # sample 0: a 2×1 image then a 1×1 image; sample 1: no image; sample 2: a 1×2 image.
    grids = [[(2, 1), (1, 1)], [], [(1, 2)]]
    max_tiles = 5
    images = torch.full((3, max_tiles, 3, 384, 384), 99.0)  # unused slots: must never reach the encoder
    slot_code = 0
    for sample, sample_grids in enumerate(grids):
        n = sum(1 + w * h for w, h in sample_grids)
        for slot in range(n):
            images[sample, slot] = slot_code
            slot_code += 1
    counts = [sum(len(_spec_order(w, h)) for w, h in g) for g in grids]
    seq = max(counts) + 3
    mask = torch.zeros(3, seq, dtype=torch.bool)
    for sample, count in enumerate(counts):
        mask[sample, seq - count :] = True  # left-padded, text before the images
    crop = torch.zeros(3, 2, 2, dtype=torch.long)
    for sample, sample_grids in enumerate(grids):
        for i, grid in enumerate(sample_grids):
            crop[sample, i] = torch.tensor(grid)
    input_ids = torch.zeros(3, seq, dtype=torch.long)
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(input_ids, images, mask, crop)

    assert len(calls) == 1 and calls[0].shape[0] == slot_code  # only real tiles, encoded once
    assert sorted(calls[0][:, 0, 0, 0].tolist()) == list(range(slot_code))
    first_slot = 0
    text = model.language.model.embed_tokens.weight[0, 0]
    for sample, sample_grids in enumerate(grids):
        expected: list[float] = []
        slot = first_slot
        for w, h in sample_grids:
            for kind, tile, token in _spec_order(w, h):
                code = {"newline": -1.0, "separator": -2.0}.get(kind, (slot + tile) * 1000.0 + token)
                expected.append(code)
            slot += 1 + w * h
        first_slot = slot
        got = embeds[sample, mask[sample], 0].tolist()
        assert got == expected
        assert torch.all(embeds[sample, ~mask[sample], 0] == text)


def test_embedding_assembly_rejects_a_visual_count_mismatch() -> None:
    model, _ = _coded_model()
    images = torch.zeros(1, 2, 3, 384, 384)
    crop = torch.tensor([[[1, 1]]])
    mask = torch.zeros(1, 430, dtype=torch.bool)
    mask[0, 5:425] = True  # 420 positions, the 1×1 image needs 421
    with pytest.raises(ValueError, match=r"marks \[420\] visual positions per sample.*need \[421\]"):
        model.prepare_inputs_embeds(torch.zeros(1, 430, dtype=torch.long), images, mask, crop)


def test_embedding_assembly_rejects_too_few_tile_slots() -> None:
    model, _ = _coded_model()
    mask = torch.zeros(1, 700, dtype=torch.bool)
    mask[0, :617] = True  # what a 2×1 image needs, but its 3 tiles do not fit in 2 slots
    with pytest.raises(ValueError, match=r"2 tile slots per sample.*needs \[3\]"):
        model.prepare_inputs_embeds(
            torch.zeros(1, 700, dtype=torch.long),
            torch.zeros(1, 2, 3, 384, 384),
            mask,
            torch.tensor([[[2, 1]]]),
        )


def test_a_batch_without_images_skips_vision() -> None:
    model, calls = _coded_model()
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(
            ids, torch.zeros(2, 1, 3, 384, 384), torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 1, 2)
        )
    assert calls == []
    torch.testing.assert_close(embeds, model.language.model.embed_tokens(ids))


# ----------------------------------------------------------------------------------------------------
# routers (spec §5 "MoE gate")


def _router(**changes: object) -> Router:
    """A router over 8 experts whose logits are the first 8 channels of the input."""
    language = dataclasses.replace(TOY.language, **changes)
    router = Router(language)
    with torch.no_grad():
        router.weight.copy_(torch.eye(8, language.hidden_size))
        if language.topk_method == "noaux_tc":
            router.e_score_correction_bias.zero_()
    return router


def _route(router: Router, logits: list[float]) -> tuple[list[int], list[float]]:
    x = torch.zeros(1, 64)
    x[0, :8] = torch.tensor(logits)
    index, weight = router(x)
    order = index[0].argsort()
    return index[0, order].tolist(), weight[0, order].tolist()


LOGITS = [2.0, 1.9, 0.0, -1.0, 0.5, -0.5, 1.0, -2.0]


def test_softmax_greedy_keeps_raw_probabilities() -> None:
    index, weight = _route(_router(), LOGITS)
    p = torch.tensor(LOGITS).softmax(0)
    assert index == [0, 1]
    assert weight == pytest.approx([p[0].item(), p[1].item()], abs=1e-7)
    assert sum(weight) < 0.7  # not renormalised


def test_softmax_greedy_with_norm_topk_prob_and_scaling() -> None:
    index, weight = _route(_router(norm_topk_prob=True, routed_scaling_factor=2.0), LOGITS)
    p = torch.tensor(LOGITS).softmax(0)
    assert index == [0, 1]
    assert weight == pytest.approx([2 * (p[i] / (p[0] + p[1])).item() for i in (0, 1)], abs=1e-6)


def test_top1_is_never_renormalised_but_is_scaled() -> None:
    index, weight = _route(
        _router(num_experts_per_tok=1, norm_topk_prob=True, routed_scaling_factor=2.0), LOGITS
    )
    assert index == [0]
    assert weight == pytest.approx([2 * torch.tensor(LOGITS).softmax(0)[0].item()], abs=1e-6)


def test_noaux_tc_bias_selects_but_does_not_weigh() -> None:
    router = _router(
        topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=False, routed_scaling_factor=1.0
    )
    s = torch.tensor(LOGITS).sigmoid()
    assert _route(router, LOGITS) == ([0, 1], pytest.approx([s[0].item(), s[1].item()], abs=1e-7))
    with torch.no_grad():
        router.e_score_correction_bias.copy_(torch.tensor([0.0, -1.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0]))
    # choice scores: expert 1 drops to 0.87 - 1, expert 2 rises to 0.5 + 0.6: experts 0 and 2 win ...
    index, weight = _route(router, LOGITS)
    assert index == [0, 2]
    # ... weighted by their plain sigmoid scores, without the bias
    assert weight == pytest.approx([s[0].item(), s[2].item()], abs=1e-7)


def test_noaux_tc_renormalises_then_scales() -> None:
    router = _router(
        topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5
    )
    with torch.no_grad():
        router.e_score_correction_bias.copy_(torch.tensor([0.0, -1.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0]))
    s = torch.tensor(LOGITS).sigmoid()
    index, weight = _route(router, LOGITS)
    assert index == [0, 2]
    assert weight == pytest.approx([2.5 * (s[i] / (s[0] + s[2])).item() for i in (0, 2)], abs=1e-6)


def test_group_limited_greedy_keeps_only_the_best_groups() -> None:
    # 4 groups of 2 experts, logits (2.0, 1.9 | 0.0, -1.0 | 0.5, -0.5 | 1.0, -2.0): the groups with the best
    # maxima are {0, 1} and {6, 7}. Plain top-4 would take expert 4 (0.5); inside those groups it is expert 7.
    router = _router(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=4)
    index, _ = _route(router, LOGITS)
    assert index == [0, 1, 6, 7]


# ----------------------------------------------------------------------------------------------------
# masks and positions for left padding and packing


def test_plain_causal_needs_no_mask() -> None:
    assert attention_mask_4d(None, None, 2, 5, torch.device("cpu")) is None
    assert attention_mask_4d(torch.ones(2, 5), None, 2, 5, torch.device("cpu")) is None


def test_padding_mask_hides_pad_keys_and_keeps_pad_rows_non_empty() -> None:
    mask = attention_mask_4d(torch.tensor([[0, 0, 1, 1]]), None, 1, 4, torch.device("cpu"))
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)


def test_packed_mask_is_block_diagonal_causal() -> None:
    cu = torch.tensor([0, 2, 5, 6, 8])  # rows of 4: the second document would run from row 0 into row 1
    with pytest.raises(ValueError, match="spans rows"):
        attention_mask_4d(None, cu, 2, 4, torch.device("cpu"))
    cu = torch.tensor([0, 2, 4, 7, 8])  # row 0: A A B B; row 1: C C C D
    mask = attention_mask_4d(None, cu, 2, 4, torch.device("cpu"))[:, 0]
    tril = torch.ones(4, 4, dtype=torch.bool).tril()
    block0 = torch.block_diag(tril[:2, :2], tril[:2, :2])
    block1 = torch.block_diag(tril[:3, :3], tril[:1, :1])
    assert torch.equal(mask[0], block0) and torch.equal(mask[1], block1)
    positions = default_position_ids(2, 4, torch.device("cpu"), cu)
    assert positions.tolist() == [[0, 1, 0, 1], [0, 1, 2, 0]]


@pytest.mark.parametrize(
    ("cu", "message"),
    [
        ([[0, 4]], "1-D"),
        ([1, 8], "start at 0"),
        ([0, 7], "end at batch"),
        ([0, 5, 4, 8], "non-decreasing"),
    ],
)
def test_document_ids_reject_malformed_cu_seqlens(cu: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        document_ids(torch.tensor(cu), 2, 4)


def test_default_positions_ignore_left_padding_like_the_official_model() -> None:
    assert default_position_ids(2, 3, torch.device("cpu"), None).tolist() == [[0, 1, 2], [0, 1, 2]]


# ----------------------------------------------------------------------------------------------------
# ViT details


def test_vit_never_sees_the_last_six_pixels_and_keeps_the_token_grid() -> None:
    torch.manual_seed(0)
    model = model_shapes.build_model(TOY)
    pixels = torch.rand(1, 3, 384, 384) * 2 - 1
    changed = pixels.clone()
    changed[..., 378:, :] = 5.0
    changed[..., :, 378:] = -5.0
    with torch.no_grad():
        features = model.vision(pixels)
        assert torch.equal(features, model.vision(changed))
    assert features.shape == (1, 27 * 27, TOY.vision.width)
    assert model.vision.blocks[0].mlp.fc1.out_features == 239  # int(64 · 3.7362)
