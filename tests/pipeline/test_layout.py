"""pipeline.layout: token counts from the spec, and a layout that reproduces the official
embedding assembly (global + newline column, separator, stitched local rows + newline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import model_shapes
from pipeline import layout, tiling

SHAPE = model_shapes.load("tiny")
GRIDS = sorted({(w // 384, h // 384) for w, h in tiling.candidate_resolutions(SHAPE)})


@pytest.mark.parametrize(("grid", "count"), [((1, 1), 421), ((2, 2), 1023), ((3, 3), 2017), ((1, 9), 2101)])
def test_spec_token_counts(grid, count):
    assert layout.image_token_count(grid, SHAPE) == count
    assert len(layout.image_layout(grid, SHAPE)) == count


def test_the_largest_layout_is_one_by_nine():
    counts = {grid: layout.image_token_count(grid, SHAPE) for grid in GRIDS}
    assert max(counts.values()) == 2101 and max(counts, key=counts.get) == (1, 9)


def test_tokens_per_side_follows_the_shape():
    assert layout.tokens_per_side(SHAPE) == 14  # ceil((384 // 14) / 2)
    assert layout.tokens_per_side(model_shapes.load("toy")) == 14


@given(st.integers(1, 12), st.integers(1, 12))
def test_layout_invariants(width_tiles, height_tiles):
    grid = (width_tiles, height_tiles)
    lay = layout.image_layout(grid, SHAPE)
    t = lay.tokens_per_side
    count = layout.image_token_count(grid, SHAPE)
    assert count == t * (t + 1) + 1 + (height_tiles * t) * (width_tiles * t + 1)
    assert len(lay) == count == len(lay.tile) == len(lay.token) == len(lay.row) == len(lay.col)
    # One separator, right after the global view.
    assert np.flatnonzero(lay.kind == layout.SEPARATOR).tolist() == [t * (t + 1)]
    assert (lay.kind[: t * (t + 1)] != layout.LOCAL).all() and (
        lay.kind[t * (t + 1) + 1 :] != layout.GLOBAL
    ).all()
    # One newline ends every global row and every stitched local row.
    assert (lay.kind == layout.NEWLINE).sum() == t + height_tiles * t
    assert lay.kind[-1] == layout.NEWLINE
    # Every adaptor token of every tile appears exactly once.
    features = lay.feature_index()
    real = np.sort(features[features >= 0])
    assert np.array_equal(real, np.arange(lay.n_tiles * t * t))
    assert lay.n_tiles == 1 + width_tiles * height_tiles


def test_layout_by_hand_for_two_by_one():
    lay = layout.image_layout((2, 1), SHAPE)
    t = 14
    # Global row 0: tokens 0..13 of tile 0, then a newline.
    assert lay.kind[:15].tolist() == [layout.GLOBAL] * 14 + [layout.NEWLINE]
    assert lay.token[:14].tolist() == list(range(14)) and (lay.tile[:14] == 0).all()
    assert lay.tile[14] == -1 and lay.row[14] == 0 and lay.col[14] == 14
    # Global row 13 then the separator at 210.
    assert lay.token[13 * 15 : 13 * 15 + 14].tolist() == list(range(13 * 14, 14 * 14))
    assert lay.kind[210] == layout.SEPARATOR
    # Local row 0: tile 1's first row, tile 2's first row, newline (29 positions).
    start = 211
    assert lay.tile[start : start + 28].tolist() == [1] * 14 + [2] * 14
    assert lay.token[start : start + 28].tolist() == list(range(14)) * 2
    assert lay.kind[start + 28] == layout.NEWLINE
    # Local row 1 begins with tile 1's second row.
    assert lay.token[start + 29 : start + 29 + 14].tolist() == list(range(14, 28))
    assert len(lay) == 211 + t * (2 * t + 1)


def official_assembly(
    features: torch.Tensor, grid: tuple[int, int], newline: torch.Tensor, separator: torch.Tensor
):
    """The spec's assembly (§2): global [t, t, D] + newline column, the separator, then local tiles
    rearranged "(th tw) (h w) d -> (th h) (tw w) d" with a newline per row."""
    width_tiles, height_tiles = grid
    t = math.isqrt(features.shape[1])
    dim = features.shape[2]
    global_part = features[0].view(t, t, dim)
    global_part = torch.cat([global_part, newline.expand(t, 1, dim)], dim=1).reshape(-1, dim)
    local = features[1:].view(height_tiles, width_tiles, t, t, dim).permute(0, 2, 1, 3, 4)
    local = local.reshape(height_tiles * t, width_tiles * t, dim)
    local = torch.cat([local, newline.expand(height_tiles * t, 1, dim)], dim=1).reshape(-1, dim)
    return torch.cat([global_part, separator.view(1, dim), local], dim=0)


@pytest.mark.parametrize("grid", GRIDS)
def test_feature_index_reproduces_the_official_assembly(grid):
    t, dim = 14, 5
    generator = torch.Generator().manual_seed(grid[0] * 10 + grid[1])
    features = torch.randn(1 + grid[0] * grid[1], t * t, dim, generator=generator)
    newline, separator = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)
    expected = official_assembly(features, grid, newline, separator)

    index = torch.from_numpy(layout.image_layout(grid, SHAPE).feature_index()).long()
    table = torch.cat([features.reshape(-1, dim), newline.view(1, dim), separator.view(1, dim)])
    lookup = torch.where(index == -1, len(table) - 2, torch.where(index == -2, len(table) - 1, index))
    assert torch.equal(table[lookup], expected)


def test_layout_arrays_are_read_only_and_cached():
    lay = layout.image_layout((3, 2), SHAPE)
    assert lay is layout.image_layout((3, 2), SHAPE)
    with pytest.raises(ValueError):
        lay.kind[0] = 0
    assert lay == layout.image_layout([3, 2], SHAPE)
    assert lay != layout.image_layout((2, 3), SHAPE)


@pytest.mark.parametrize("grid", [(0, 1), (1, -2), (1.5, 1), ("a", 1), (1, 2, 3), None])
def test_bad_grid_is_a_clear_error(grid):
    with pytest.raises(ValueError, match="grid"):
        layout.image_token_count(grid, SHAPE)
