"""The vision-language adaptor and the order in which its tokens enter the sequence (spec §2).

:class:`Projector` (``downsample_mlp_gelu``): each tile's grid×grid features are zero-padded at the bottom and
right to a multiple of the downsample ratio (27 → 28; the zeros come after the ViT's final norm), every 2×2
block is unfolded into one token of 4·width channels in (c, dy, dx) order (index c·4 + dy·2 + dx), tokens
row-major, then Linear → GELU (exact erf) → Linear (``layers.0`` and ``layers.2``; deeper projectors add GELU
+ Linear pairs in between, with width n_embed · mlp_ratio).

:func:`visual_token_index` spells out, for one image, which row of [its adaptor tokens ; image_newline ;
view_seperator] fills each of its visual positions: the global view's t rows each followed by a newline, the
separator, then the local tiles stitched "(th tw)(h w) → (th h)(tw w)" into one grid whose every row is
followed by a newline.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from model_shapes.shape import ProjectorShape


class Projector(nn.Module):
    """features [tiles, grid², input_dim] → adaptor tokens [tiles, t², n_embed], t = ceil(grid / ratio)."""

    def __init__(self, shape: ProjectorShape) -> None:
        super().__init__()
        self.ratio = shape.downsample_ratio
        width = shape.n_embed * shape.mlp_ratio
        layers: list[nn.Module] = [nn.Linear(shape.input_dim * self.ratio**2, width)]
        for _ in range(shape.depth - 2):
            layers += [nn.GELU(), nn.Linear(width, width)]
        # As the official code: the last GELU + Linear is there for every depth, even 1.
        layers += [nn.GELU(), nn.Linear(width, shape.n_embed)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tiles, tokens, channels = features.shape
        side = round(tokens**0.5)
        pad = -side % self.ratio
        grid = features.view(tiles, side, side, channels).permute(0, 3, 1, 2)
        grid = F.pad(grid, (0, pad, 0, pad))
        unfolded = F.unfold(grid, kernel_size=self.ratio, stride=self.ratio)  # [tiles, channels·ratio², t²]
        return self.layers(unfolded.transpose(1, 2))


@lru_cache(maxsize=256)
def visual_token_index(width_tiles: int, height_tiles: int, t: int) -> torch.Tensor:
    """int64 index of every visual position of one image, in sequence order, into the rows of
    cat(tokens.flatten(0, 1), image_newline, view_seperator), where tokens [1 + width_tiles·height_tiles, t²,
    D] are the image's adaptor outputs (global view first, then local tiles row-major).

    So an index below n_tiles·t² is an adaptor token, n_tiles·t² is the newline and n_tiles·t² + 1 the
    separator. The result is cached; treat it as read-only.
    """
    per_tile = t * t
    n_features = (1 + width_tiles * height_tiles) * per_tile
    newline, separator = n_features, n_features + 1

    def with_newlines(grid: torch.Tensor) -> torch.Tensor:
        column = torch.full((grid.shape[0], 1), newline, dtype=torch.long)
        return torch.cat((grid, column), dim=1).flatten()

    global_view = torch.arange(per_tile).view(t, t)
    local = (
        torch.arange(per_tile, n_features)
        .view(height_tiles, width_tiles, t, t)  # (th, tw, h, w)
        .permute(0, 2, 1, 3)  # (th, h, tw, w)
        .reshape(height_tiles * t, width_tiles * t)
    )
    return torch.cat((with_newlines(global_view), torch.tensor([separator]), with_newlines(local)))
