"""pipeline.tiling against the official processor's outputs and against an independent reading of
its rules: Pillow's ImageOps.pad and crop, torchvision's ToTensor + Normalize arithmetic in torch."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

import model_shapes
from pipeline import layout, tiling

SHAPE = model_shapes.load("tiny")
TILE = 384
FILL = (127, 127, 127)


# --- an independent reading of the official processor, written from the spec -----------------


def reference_best_resolution(size: tuple[int, int], candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """The spec's rule, restated: most kept pixels, then least waste, earlier candidate on a tie."""
    w, h = size
    scored = []
    for order, (cw, ch) in enumerate(candidates):
        s = min(cw / w, ch / h)
        kept = min(int(w * s) * int(h * s), w * h)
        scored.append((-kept, cw * ch - kept, order, (cw, ch)))
    return min(scored)[3]


def reference_tiles(image: Image.Image, cropping: bool) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Official path: RGB, ImageOps.pad for the global view and the canvas, row-major PIL crops,
    ToTensor (÷255 in float32) then Normalize((x - 0.5) / 0.5), in torch."""
    rgb = image.convert("RGB")
    if cropping:
        best_w, best_h = reference_best_resolution(rgb.size, tiling.candidate_resolutions(SHAPE))
    else:
        best_w, best_h = TILE, TILE

    def to_tensor(pil: Image.Image) -> torch.Tensor:
        chw = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
        return chw.to(torch.float32).div(255).sub(0.5).div(0.5)

    tiles = [to_tensor(ImageOps.pad(rgb, (TILE, TILE), color=FILL))]
    canvas = ImageOps.pad(rgb, (best_w, best_h), color=FILL)
    for top in range(0, best_h, TILE):
        for left in range(0, best_w, TILE):
            tiles.append(to_tensor(canvas.crop((left, top, left + TILE, top + TILE))))
    return tiles, (best_w // TILE, best_h // TILE)


def assert_same_as_reference(image: Image.Image, cropping: bool = True) -> None:
    expected, grid = reference_tiles(image, cropping)
    tiles = tiling.tile_image(image, SHAPE, cropping=cropping)
    assert tiles.grid == grid
    assert tiles.n_tiles == len(expected) == 1 + grid[0] * grid[1]
    got = tiling.normalize(tiles.stacked())
    assert got.dtype == np.float32 and got.shape == (len(expected), 3, TILE, TILE)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(ours, theirs.numpy()), f"tile {index} differs for {image.size} {image.mode}"


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: resampling errors show on both.
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], -1)
    noise = rng.integers(0, 64, size=(height, width, 3))
    rgb = Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


# --- the official processor's own outputs ----------------------------------------------------


def golden_images(golden_dir):
    meta = json.loads((golden_dir / "pixels_sample.json").read_text())
    return meta["images"]


@pytest.mark.parametrize("cropping", [True, False], ids=["cropping_on", "cropping_off"])
def test_golden_photographs_bit_exact(golden_dir, cropping):
    for record in golden_images(golden_dir):
        reference = record["cropping_on" if cropping else "cropping_off"]
        with Image.open(golden_dir / record["file"]) as image:
            tiles = tiling.tile_image(image, SHAPE, cropping=cropping)
        assert [list(tiles.grid)] == reference["images_spatial_crop"], record["name"]
        assert layout.image_token_count(tiles.grid, SHAPE) == reference["n_image_tokens"]
        stacked = tiles.stacked()
        assert len(stacked) == reference["n_tiles"] == len(reference["tiles"])
        normalized = tiling.normalize(stacked)
        for index, (u8, values, expected) in enumerate(
            zip(stacked, normalized, reference["tiles"], strict=True)
        ):
            where = f"{record['name']} tile {index}"
            chw = np.ascontiguousarray(u8.transpose(2, 0, 1))
            assert hashlib.sha256(chw.tobytes()).hexdigest() == expected["sha256_uint8_chw"], where
            rounded = np.round(values, 4).astype("<f4").tobytes()
            assert hashlib.sha256(rounded).hexdigest() == expected["sha256_round4"], where
            # Sums differ from the reference only by float64 summation order.
            assert math.isclose(values.sum(dtype=np.float64), expected["sum"], rel_tol=1e-12, abs_tol=1e-9)
            sumsq = np.square(values, dtype=np.float64).sum()
            assert math.isclose(sumsq, expected["sumsq"], rel_tol=1e-12), where


def test_golden_layout_sample(golden_dir):
    with open(golden_dir / "layout_sample.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300
    for row in rows:
        size = (int(row["width"]), int(row["height"]))
        best = (int(row["best_width"]), int(row["best_height"]))
        grid = (int(row["w_tiles"]), int(row["h_tiles"]))
        assert tiling.select_best_resolution(size, tiling.candidate_resolutions(SHAPE)) == best, size
        assert tiling.best_grid(size, SHAPE) == grid, size
        assert layout.image_token_count(grid, SHAPE) == int(row["n_image_tokens"]), size


# --- the spec's rules ------------------------------------------------------------------------


def test_candidates_in_official_order():
    expected = [(384, 384), (384, 768), (768, 384), (384, 1152), (1152, 384), (384, 1536), (1536, 384),
                (768, 768), (384, 1920), (1920, 384), (384, 2304), (2304, 384), (768, 1152), (1152, 768),
                (384, 2688), (2688, 384), (384, 3072), (3072, 384), (768, 1536), (1536, 768),
                (384, 3456), (3456, 384), (1152, 1152)]  # fmt: skip
    assert tiling.candidate_resolutions(SHAPE) == expected
    assert all(m * n <= 9 for m, n in ((w // TILE, h // TILE) for w, h in expected))


@pytest.mark.parametrize(
    ("size", "best"),
    [
        ((640, 480), (768, 768)),
        ((1024, 768), (1152, 768)),
        ((1920, 1080), (1536, 768)),
        ((300, 200), (384, 384)),
        ((1000, 1000), (1152, 1152)),
        ((500, 3000), (384, 2304)),
    ],
)
def test_spec_worked_examples(size, best):
    assert tiling.select_best_resolution(size, tiling.candidate_resolutions(SHAPE)) == best


def test_exact_tie_keeps_the_earlier_candidate():
    # 384×384 fits (384,384) exactly; every larger canvas keeps the same pixels with more waste.
    assert tiling.select_best_resolution((384, 384), [(768, 768), (384, 384)]) == (384, 384)
    # A full tie (same kept pixels, same waste): the first one listed wins.
    assert tiling.select_best_resolution((100, 100), [(384, 768), (768, 384)]) == (384, 768)
    assert tiling.select_best_resolution((100, 100), [(768, 384), (384, 768)]) == (768, 384)


def test_truncation_not_rounding_in_kept_pixels():
    # 385×384 loses one column at scale 384/385 (int() truncation), so 2×1 wins: kept pixels grow.
    assert tiling.best_grid((385, 384), SHAPE) == (2, 1)
    assert tiling.best_grid((384, 385), SHAPE) == (1, 2)
    assert tiling.best_grid((384, 384), SHAPE) == (1, 1)


@given(st.integers(1, 12000), st.integers(1, 12000))
def test_select_best_resolution_matches_rule(width, height):
    candidates = tiling.candidate_resolutions(SHAPE)
    best = tiling.select_best_resolution((width, height), candidates)
    assert best == reference_best_resolution((width, height), candidates)
    grid = tiling.best_grid((width, height), SHAPE)
    assert grid == (best[0] // TILE, best[1] // TILE)
    assert tiling.best_grid((width, height), SHAPE, cropping=False) == (1, 1)


@given(st.integers(1, 6000), st.integers(1, 6000), st.integers(1, 4000), st.integers(1, 4000))
def test_contain_size_matches_pillow(width, height, box_w, box_h):
    image = Image.new("RGB", (width, height))
    # ImageOps.contain returns an empty image when a side rounds to 0: compare sizes only.
    assert ImageOps.contain(
        image, (box_w, box_h), method=Image.Resampling.NEAREST
    ).size == tiling.contain_size((width, height), (box_w, box_h))


EDGE_SIZES = [
    (1, 1), (1, 5000), (5000, 1), (20000, 3), (3, 20000), (8000, 2), (384, 384), (385, 384), (384, 385),
    (383, 385), (383, 384), (767, 768), (768, 767), (769, 768), (768, 769), (1151, 1152), (1153, 1152),
    (1152, 1152), (1536, 767), (3456, 384), (384, 3456), (3457, 385), (2, 3), (401, 1), (1, 769),
]  # fmt: skip


@pytest.mark.parametrize("size", EDGE_SIZES, ids=[f"{w}x{h}" for w, h in EDGE_SIZES])
def test_edge_sizes_pixel_for_pixel(size):
    assert_same_as_reference(noise_image(*size, seed=size[0] * 7 + size[1]))


@pytest.mark.parametrize("size", [(640, 480), (1, 1), (20000, 3), (385, 384)])
def test_cropping_off_duplicates_the_global_tile(size):
    image = noise_image(*size, seed=3)
    tiles = tiling.tile_image(image, SHAPE, cropping=False)
    assert tiles.grid == (1, 1)
    assert np.array_equal(tiles.local_views[0], tiles.global_view)
    assert layout.image_token_count(tiles.grid, SHAPE) == 421
    assert_same_as_reference(image, cropping=False)


def _mode_image(mode: str) -> Image.Image:
    base = noise_image(523, 311, seed=11)
    if mode == "P_transparency":
        image = base.quantize(colors=32)
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        gray = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)
        assert image.mode == "I;16"
        return image
    if mode == "RGBA":
        rgba = np.dstack([np.asarray(base), np.arange(523 * 311, dtype=np.uint32).reshape(311, 523) % 256])
        return Image.fromarray(rgba.astype(np.uint8))
    return base.convert(mode)


MODES = [
    "RGB",
    "L",
    "LA",
    "P",
    "P_transparency",
    "RGBA",
    "CMYK",
    "I;16",
    "I",
    "F",
    "1",
    "YCbCr",
    "LAB",
    "HSV",
]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_follows_the_official_loader(mode):
    image = _mode_image(mode)
    assert_same_as_reference(image)  # reference_tiles starts with image.convert("RGB")


def test_background_composites_alpha_as_an_option():
    rgba = Image.new("RGBA", (400, 300), (255, 0, 0, 0))  # fully transparent red
    official = tiling.tile_image(rgba, SHAPE)
    assert tuple(official.local_views[0][150, 200]) == (255, 0, 0)  # alpha dropped, colour shows
    white = tiling.tile_image(rgba, SHAPE, background=(255, 255, 255))
    assert tuple(white.local_views[0][150, 200]) == (255, 255, 255)
    assert tiling.to_rgb(Image.new("RGB", (2, 2)), background=(0, 0, 0)).mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decoded_files_of_common_formats(fmt):
    buffer = io.BytesIO()
    source = noise_image(700, 420, seed=5)
    source.save(buffer, format=fmt)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert_same_as_reference(image)


@given(st.integers(1, 900), st.integers(1, 900), st.integers(0, 2**16))
def test_random_sizes_pixel_for_pixel(width, height, seed):
    assert_same_as_reference(noise_image(width, height, seed=seed))


def test_tiles_are_row_major():
    # A 2×2 canvas from a 768×768 image: every tile is a quarter of the image, top row first.
    image = noise_image(768, 768, seed=9)
    tiles = tiling.tile_image(image, SHAPE)
    pixels = np.asarray(image)
    assert tiles.grid == (2, 2)
    quarters = [pixels[:384, :384], pixels[:384, 384:], pixels[384:, :384], pixels[384:, 384:]]
    for tile, quarter in zip(tiles.local_views, quarters, strict=True):
        assert np.array_equal(tile, quarter)
    assert tiles.stacked().shape == (5, 384, 384, 3)


def test_vanishing_side_pads_to_fill():
    # 8000×2 scales to 384×0 in the global view: the tile is pure fill colour.
    tiles = tiling.tile_image(noise_image(8000, 2), SHAPE)
    assert (tiles.global_view == 127).all()


def test_zero_sized_image_is_an_error():
    with pytest.raises(ValueError, match="at least 1×1"):
        tiling.tile_image(Image.new("RGB", (0, 5)), SHAPE)
    with pytest.raises(ValueError, match="at least 1×1"):
        tiling.best_grid((10, 0), SHAPE)


# --- normalize -----------------------------------------------------------------------------


def _torchvision_math(u8: np.ndarray, mean, std) -> np.ndarray:
    chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(u8, -1, -3)))
    values = chw.to(torch.float32).div(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return values.sub(mean_t).div(std_t).numpy()


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ],
    ids=["siglip", "clip"],
)
def test_normalize_bit_exact_for_every_value(mean, std):
    every = np.arange(256, dtype=np.uint8)
    pixels = np.stack([every, every[::-1], np.roll(every, 7)], axis=-1).reshape(16, 16, 3)
    assert np.array_equal(tiling.normalize(pixels, mean, std), _torchvision_math(pixels, mean, std))


def test_normalize_shapes_range_and_out():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 8, 3), dtype=np.uint8)
    values = tiling.normalize(pixels)
    assert values.shape == (2, 3, 5, 8) and values.dtype == np.float32
    assert values.min() >= -1.0 and values.max() <= 1.0
    assert tiling.normalize(np.zeros((1, 1, 3), np.uint8))[0, 0, 0] == -1.0
    assert tiling.normalize(np.full((1, 1, 3), 255, np.uint8))[0, 0, 0] == 1.0
    batch = np.zeros((4, 2, 3, 5, 8), dtype=np.float32)
    result = tiling.normalize(pixels, out=batch[1])
    assert result.base is batch or np.shares_memory(result, batch)
    assert np.array_equal(batch[1], values) and not batch[0].any()


def test_normalize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        tiling.normalize(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        tiling.normalize(np.zeros((4, 4, 3), np.uint8), out=np.zeros((4, 4, 3), np.float32))


@given(
    st.lists(
        st.tuples(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 9), st.integers(1, 9)),
        min_size=1,
        max_size=40,
    )
)
def test_padded_pixels_is_contain_size_vectorised(images):
    """The one padding arithmetic (filters, statistics and `vl2prep tile` use it) equals `contain_size`."""
    widths, heights, grid_w, grid_h = (np.array(column) for column in zip(*images, strict=True))
    canvas, padding = tiling.padded_pixels(widths, heights, np.stack([grid_w, grid_h], axis=1), 384)
    for (width, height, gw, gh), area, pad in zip(images, canvas, padding, strict=True):
        fit = tiling.contain_size((width, height), (gw * 384, gh * 384))
        assert area == gw * gh * 384 * 384 and pad == area - fit[0] * fit[1]


def test_cropping_is_for_samples_of_at_most_two_images():
    assert [tiling.cropping_for(n) for n in range(5)] == [True, True, True, False, False]
    assert tiling.cropping_for(np.array([1, 2, 3])).tolist() == [True, True, False]
