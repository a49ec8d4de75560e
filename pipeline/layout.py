"""The exact visual-token layout of one image in a DeepSeek-VL2 sequence.

For an image tiled into a (width_tiles, height_tiles) grid, the official processor emits
`image_token_count` copies of the `<image>` id, and the model fills those positions, in order, with:

1. the global view's adaptor tokens, row by row (t rows of t tokens, t = ceil(grid / downsample),
   14 for SigLIP at 384/14 with 2×2 pixel shuffle), each row followed by one `image_newline`;
2. one `view_seperator`;
3. the local tiles stitched into one (height_tiles·t) × (width_tiles·t) token grid, row by row,
   each row followed by one `image_newline`.

`Layout` spells this out per position, so that a model (or a checker) can scatter embeddings
without recomputing anything: which tile and which of its adaptor tokens, or which learned
parameter, sits at each position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from model_shapes import ModelShape

__all__ = [
    "GLOBAL",
    "LOCAL",
    "NEWLINE",
    "SEPARATOR",
    "Layout",
    "image_layout",
    "image_token_count",
    "tokens_per_side",
]

GLOBAL = 0
"""`Layout.kind` of an adaptor token of the global view."""
LOCAL = 1
"""`Layout.kind` of an adaptor token of a local tile."""
NEWLINE = 2
"""`Layout.kind` of an `image_newline` position (end of a global or a stitched local row)."""
SEPARATOR = 3
"""`Layout.kind` of the `view_seperator` position between the global and the local views."""


@dataclass(frozen=True, eq=False)
class Layout:
    """Every visual position of one image, in sequence order (read-only arrays of equal length).

    - `kind` int8: GLOBAL, LOCAL, NEWLINE or SEPARATOR.
    - `tile` int16: the tile whose adaptor output fills the position, indexed as in
      `Tiles.stacked()` (0 = global view, 1 + r·width_tiles + c = local tile at row r, column c);
      -1 for NEWLINE and SEPARATOR.
    - `token` int16: the index of the adaptor token within that tile, row-major over its t×t grid;
      -1 for NEWLINE and SEPARATOR.
    - `row`, `col` int16: the position in its view's token grid (global: 0..t-1; local: over the
      stitched (height_tiles·t) grid; a NEWLINE has col == the row's width); -1 for SEPARATOR.
    """

    grid: tuple[int, int]
    tokens_per_side: int
    kind: np.ndarray
    tile: np.ndarray
    token: np.ndarray
    row: np.ndarray
    col: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_tiles(self) -> int:
        """Tiles the image contributes to the vision encoder: 1 global + width_tiles·height_tiles."""
        return 1 + self.grid[0] * self.grid[1]

    def feature_index(self) -> np.ndarray:
        """int32 index of each position into the image's adaptor output flattened to
        [n_tiles · t², D]; -1 where `image_newline` goes, -2 where `view_seperator` goes."""
        per_tile = self.tokens_per_side**2
        index = self.tile.astype(np.int32) * per_tile + self.token
        index[self.kind == NEWLINE] = -1
        index[self.kind == SEPARATOR] = -2
        return index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (
            self.grid == other.grid
            and self.tokens_per_side == other.tokens_per_side
            and all(
                np.array_equal(getattr(self, name), getattr(other, name))
                for name in ("kind", "tile", "token", "row", "col")
            )
        )

    __hash__ = None  # type: ignore[assignment]


def tokens_per_side(shape: ModelShape) -> int:
    """Adaptor tokens along one side of a tile: ceil((image_size // patch_size) / downsample_ratio)."""
    return math.ceil((shape.image_size // shape.patch_size) / shape.downsample_ratio)


def image_token_count(grid: tuple[int, int], shape: ModelShape) -> int:
    """`<image>` tokens for one image with `grid` = (width_tiles, height_tiles).

    t·(t + 1) for the global view with its newlines, 1 separator, and (height_tiles·t) rows of
    (width_tiles·t + 1) for the stitched local views: 421 for 1×1, 1023 for 2×2 at t = 14.
    """
    width_tiles, height_tiles = _check_grid(grid)
    t = tokens_per_side(shape)
    return t * (t + 1) + 1 + (height_tiles * t) * (width_tiles * t + 1)


def image_layout(grid: tuple[int, int], shape: ModelShape) -> Layout:
    """The `Layout` of one image with `grid` = (width_tiles, height_tiles); cached per grid."""
    return _layout(_check_grid(grid), tokens_per_side(shape))


@lru_cache(maxsize=256)
def _layout(grid: tuple[int, int], t: int) -> Layout:
    width_tiles, height_tiles = grid

    # Global view: t rows of t tokens + 1 newline.
    g_row, g_col = np.divmod(np.arange(t * (t + 1)), t + 1)
    g_newline = g_col == t
    g_kind = np.where(g_newline, NEWLINE, GLOBAL)
    g_tile = np.where(g_newline, -1, 0)
    g_token = np.where(g_newline, -1, g_row * t + g_col)

    # Stitched local grid: (height_tiles·t) rows of (width_tiles·t) tokens + 1 newline.
    width = width_tiles * t
    l_row, l_col = np.divmod(np.arange(height_tiles * t * (width + 1)), width + 1)
    l_newline = l_col == width
    tile_row, in_row = np.divmod(l_row, t)
    tile_col, in_col = np.divmod(l_col, t)
    l_kind = np.where(l_newline, NEWLINE, LOCAL)
    l_tile = np.where(l_newline, -1, 1 + tile_row * width_tiles + tile_col)
    l_token = np.where(l_newline, -1, in_row * t + in_col)

    def joined(global_part: np.ndarray, separator: int, local_part: np.ndarray, dtype: type) -> np.ndarray:
        array = np.concatenate([global_part, [separator], local_part]).astype(dtype)
        array.setflags(write=False)
        return array

    return Layout(
        grid=grid,
        tokens_per_side=t,
        kind=joined(g_kind, SEPARATOR, l_kind, np.int8),
        tile=joined(g_tile, -1, l_tile, np.int16),
        token=joined(g_token, -1, l_token, np.int16),
        row=joined(g_row, -1, l_row, np.int16),
        col=joined(g_col, -1, l_col, np.int16),
    )


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    try:
        width_tiles, height_tiles = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (width_tiles, height_tiles), got {grid!r}") from None
    if width_tiles < 1 or height_tiles < 1 or (width_tiles, height_tiles) != tuple(grid):
        raise ValueError(f"grid must hold two positive integers (width_tiles, height_tiles), got {grid!r}")
    return width_tiles, height_tiles
