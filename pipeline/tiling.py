"""Dynamic tiling of one image, bit-identical to the DeepSeek-VL2 processor.

The official processor picks a canvas from the shape's candidate resolutions
(`select_best_resolution`), pads the image onto a square global view and onto that canvas with
`PIL.ImageOps.pad` (bicubic, centred, fill = int(mean * 255)), cuts the canvas into row-major
tiles and normalises each tile with ToTensor + Normalize. This module does the same work with the
same two Pillow resizes, but pads, crops and normalises in numpy, so that everything beyond the
resizes costs little.

Only `(width, height)` decides the grid: `best_grid` and `pipeline.layout` need no pixels, so a
pipeline can compute every layout from image headers alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from model_shapes import ModelShape

__all__ = [
    "MAX_CROPPED_IMAGES",
    "Tiles",
    "best_grid",
    "candidate_resolutions",
    "contain_size",
    "cropping_for",
    "normalize",
    "padded_pixels",
    "select_best_resolution",
    "tile_image",
    "to_rgb",
]

Size = tuple[int, int]

MAX_CROPPED_IMAGES = 2
"""The official processor crops (local tiles on the best canvas) only when a sample has at most this many
images; with more, every image gets a 1×1 grid whose local tile repeats the global view."""


def cropping_for(images: Any) -> Any:
    """Whether images of a sample (or of each sample: an int or a numpy array of image counts) are
    cropped: the one home of the official rule (`MAX_CROPPED_IMAGES`)."""
    return images <= MAX_CROPPED_IMAGES


@dataclass(frozen=True)
class Tiles:
    """The tiles of one image, in the order the official processor emits them.

    `global_view` is the whole image padded to one square tile, uint8 [S, S, 3] (HWC, RGB).
    `local_views` are the tiles of the padded canvas, uint8 [n, S, S, 3], row-major (top row left
    to right, then the next row); n == width_tiles * height_tiles.
    `grid` is (width_tiles, height_tiles), the row of `images_spatial_crop`.
    """

    global_view: np.ndarray
    local_views: np.ndarray
    grid: Size

    @property
    def n_tiles(self) -> int:
        """Number of tiles fed to the vision encoder: the global view plus the local views."""
        return 1 + len(self.local_views)

    def stacked(self) -> np.ndarray:
        """All tiles as uint8 [1 + n, S, S, 3]: global view first, then the local views."""
        return np.concatenate([self.global_view[None], self.local_views], axis=0)


def candidate_resolutions(shape: ModelShape) -> list[Size]:
    """The shape's candidate canvases as (width, height) pairs, in the official order."""
    return [tuple(c) for c in shape.candidate_resolutions]


def select_best_resolution(image_size: Size, candidates: Sequence[Size]) -> Size:
    """The canvas the official processor picks for an image of `image_size` = (width, height).

    Each candidate (W, H) scales the image by min(W / w, H / h); the kept pixel count is the
    truncated scaled size, capped at the original pixel count, and the waste is the rest of the
    canvas. The most kept pixels win, then the least waste; ties keep the earlier candidate.
    """
    width, height = _check_size(image_size)
    best: Size | None = None
    best_effective = 0
    best_waste = float("inf")
    for cand_w, cand_h in candidates:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_w, cand_h), effective, waste
    if best is None:
        raise ValueError("select_best_resolution needs at least one candidate resolution")
    return best


def best_grid(image_size: Size, shape: ModelShape, cropping: bool = True) -> Size:
    """(width_tiles, height_tiles) for an image of `image_size` = (width, height), from its size alone.

    With `cropping=False` (the official processor's choice when a sample has more than two images)
    the grid is always 1×1, and the single local tile repeats the global view.
    """
    _check_size(image_size)
    if not cropping:
        return (1, 1)
    tile = shape.image_size
    cand_w, cand_h = _best_resolution_cached(tuple(image_size), _candidates_key(shape))
    return (cand_w // tile, cand_h // tile)


def contain_size(image_size: Size, box: Size) -> Size:
    """Size of the image after `PIL.ImageOps.contain(image, box)`: fit inside, keep aspect ratio.

    Follows Pillow 13: the non-limiting side is `round()`ed (half to even) from the float ratio, and
    a side may round to 0 (the image then vanishes from the padded result).
    """
    width, height = image_size
    box_w, box_h = box
    image_ratio = width / height
    box_ratio = box_w / box_h
    if image_ratio > box_ratio:
        return (box_w, round(height / width * box_w))
    if image_ratio < box_ratio:
        return (round(width / height * box_h), box_h)
    return (box_w, box_h)


def padded_pixels(
    widths: np.ndarray, heights: np.ndarray, grids: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """(canvas pixels, padding pixels) of each image: its local canvas (grid · tile pixels a side) and what
    of it the image fitted inside (`contain_size`, the same rounding, vectorised) leaves as padding.
    `widths`, `heights`: int arrays of positive sizes; `grids`: int array [n, 2] of (width, height) tiles.
    The padding share of an image is padding / canvas; the one home of that arithmetic."""
    widths = np.asarray(widths, dtype=np.int64)
    heights = np.asarray(heights, dtype=np.int64)
    grids = np.asarray(grids, dtype=np.int64).reshape(-1, 2)
    canvas_w, canvas_h = grids[:, 0] * tile, grids[:, 1] * tile
    # The float ratios compared as `contain_size` (and Pillow) compare them.
    image_ratio, box_ratio = widths / heights, canvas_w / canvas_h
    wider, taller = image_ratio > box_ratio, image_ratio < box_ratio
    fit_w = np.where(taller, np.round(widths / heights * canvas_h), canvas_w).astype(np.int64)
    fit_h = np.where(wider, np.round(heights / widths * canvas_w), canvas_h).astype(np.int64)
    canvas = canvas_w * canvas_h
    return canvas, canvas - fit_w * fit_h


def to_rgb(image: Image.Image, background: tuple[int, int, int] | None = None) -> Image.Image:
    """The image in RGB mode.

    With `background=None` (the default) this is the official loader's `image.convert("RGB")`:
    alpha is dropped (the colour under a transparent pixel shows), palettes are expanded, 16-bit
    and float modes go through Pillow's own conversion. With a `background` colour, images that
    carry transparency (RGBA, LA, PA, P or L with a transparent index) are alpha-composited onto it
    instead; this departs from the official processor and is never the default.
    """
    if background is not None and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def tile_image(
    image: Image.Image,
    shape: ModelShape,
    cropping: bool = True,
    *,
    background: tuple[int, int, int] | None = None,
) -> Tiles:
    """Tile one image exactly as the official DeepSeek-VL2 processor does.

    `cropping` is the official switch: True when the sample has at most two images. `background`
    is passed to `to_rgb` (None: the official `convert("RGB")`). Raises ValueError for an image
    with a zero-sized side.
    """
    rgb = to_rgb(image, background)
    _check_size(rgb.size)
    tile = shape.image_size
    fill = _pack_rgb(shape.pad_color)
    global_packed = _pad(rgb, (tile, tile), fill)
    if cropping:
        grid_w, grid_h = best_grid(rgb.size, shape)
    else:
        grid_w, grid_h = 1, 1
    if (grid_w, grid_h) == (1, 1):
        # ImageOps.pad to the same box is deterministic: the 1×1 canvas equals the global view.
        local_packed = global_packed[None].copy()
    else:
        canvas = _pad(rgb, (grid_w * tile, grid_h * tile), fill)
        local_packed = (
            canvas.reshape(grid_h, tile, grid_w, tile)
            .transpose(0, 2, 1, 3)
            .reshape(grid_h * grid_w, tile, tile)
        )
    global_view, local_views = _unpack_rgb(global_packed), _unpack_rgb(local_packed)
    return Tiles(global_view=global_view, local_views=local_views, grid=(grid_w, grid_h))


def normalize(
    pixels: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 [..., H, W, 3] → float32 [..., 3, H, W], as ToTensor then Normalize(mean, std).

    The values are torchvision's float32 results, (u / 255 - mean) / std with each step rounded
    to float32, bit for bit; with the shape's defaults (0.5) they lie in [-1, 1]. `out`, when
    given, is a float32 array of the result's shape to write into (a slot of a batch, say).
    """
    if pixels.dtype != np.uint8 or pixels.ndim < 3 or pixels.shape[-1] != 3:
        raise ValueError(f"normalize expects uint8 [..., H, W, 3], got {pixels.dtype} {pixels.shape}")
    channels_first = np.moveaxis(pixels, -1, -3)
    if out is None:
        out = np.empty(channels_first.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != channels_first.shape:
        raise ValueError(
            f"normalize: out must be float32 {channels_first.shape}, got {out.dtype} {out.shape}"
        )
    np.copyto(out, channels_first, casting="unsafe")
    steps = [_normalize_steps(float(m), float(s)) for m, s in zip(mean, std, strict=True)]
    if steps[0] == steps[1] == steps[2]:
        _apply_steps(out, steps[0])
    else:
        for channel, channel_steps in enumerate(steps):
            _apply_steps(out[..., channel, :, :], channel_steps)
    return out


_Steps = tuple[tuple[str, np.float32], ...]


def _apply_steps(values: np.ndarray, steps: _Steps) -> None:
    for op, operand in steps:
        (np.divide if op == "div" else np.subtract)(values, operand, out=values)


@lru_cache(maxsize=64)
def _normalize_steps(mean: float, std: float) -> _Steps:
    """The float32 operations that map u (0..255, as float32) to torchvision's value.

    The reference is three rounded steps: / 255, - mean, / std. Two steps, / (255·std) then
    - mean/std, often give the same 256 results (they do for mean = std = 0.5); that is checked
    here over every possible input, and the shorter form is used only when it is exact.
    """
    f32 = np.float32
    exact: _Steps = (("div", f32(255)), ("sub", f32(mean)), ("div", f32(std)))
    short: _Steps = (("div", f32(255 * std)), ("sub", f32(mean / std)))
    reference = np.arange(256, dtype=np.float32)
    candidate = reference.copy()
    _apply_steps(reference, exact)
    _apply_steps(candidate, short)
    return short if np.array_equal(reference, candidate) else exact


def _pad(image: Image.Image, box: Size, fill: np.uint32) -> np.ndarray:
    """`ImageOps.pad(image, box, color=fill)` as packed pixels: contain, then paste centred."""
    box_w, box_h = box
    fit_w, fit_h = contain_size(image.size, box)
    if (fit_w, fit_h) == (box_w, box_h):
        return _packed_pixels(image.resize(box, resample=Image.Resampling.BICUBIC))
    out = np.empty((box_h, box_w), dtype=np.uint32)
    if min(fit_w, fit_h) == 0:
        out.fill(fill)
        return out
    resized = _packed_pixels(image.resize((fit_w, fit_h), resample=Image.Resampling.BICUBIC))
    # Fill only the margins, then paste: the centre is written once.
    if fit_w != box_w:
        left = round((box_w - fit_w) * 0.5)
        out[:, :left] = fill
        out[:, left + fit_w :] = fill
        out[:, left : left + fit_w] = resized
    else:
        top = round((box_h - fit_h) * 0.5)
        out[:top] = fill
        out[top + fit_h :] = fill
        out[top : top + fit_h] = resized
    return out


# Pixels move through tiling "packed": one uint32 per pixel holding the bytes R, G, B, X, which is
# how Pillow stores RGB. Pillow's Arrow export then shares its memory without a copy, and padding,
# pasting and cutting tiles move whole pixels. `_unpack_rgb` gives the uint8 [..., 3] view.


def _packed_pixels(image: Image.Image) -> np.ndarray:
    """uint32 [H, W] packed pixels of an RGB image, sharing Pillow's memory where it allows."""
    try:
        flat = pa.array(image).values.to_numpy(zero_copy_only=True)
    except (ValueError, pa.ArrowException):
        # Images Pillow keeps in several memory blocks cannot be exported: copy them out.
        rgbx = np.empty((image.height, image.width, 4), dtype=np.uint8)
        rgbx[..., :3] = np.asarray(image)
        rgbx[..., 3] = 255
        return rgbx.view(np.uint32)[..., 0]
    return flat.view(np.uint32).reshape(image.height, image.width)


def _pack_rgb(color: tuple[int, int, int]) -> np.uint32:
    return np.array([*color, 255], dtype=np.uint8).view(np.uint32)[0]


def _unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB view of packed pixels (the X byte is skipped by the strides)."""
    return packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]


def _check_size(image_size: Size) -> Size:
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1×1 pixels, got {width}×{height}")
    return width, height


def _candidates_key(shape: ModelShape) -> tuple[Size, ...]:
    return tuple(tuple(c) for c in shape.candidate_resolutions)


@lru_cache(maxsize=65536)
def _best_resolution_cached(image_size: Size, candidates: tuple[Size, ...]) -> Size:
    return select_best_resolution(image_size, candidates)
