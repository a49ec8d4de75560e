"""Benchmark: `pipeline.tiling` against the official processor's per-image path and the resize floor.

For each image (decoded once, before timing) three ways to the same [1 + n, 3, 384, 384] float32
tiles are timed on one thread, best of --repeat:

- floor:    the two Pillow bicubic resizes that parity forces (global view and local canvas) alone;
- baseline: what the official processor does per image: two `ImageOps.pad` calls, PIL crops,
            ToTensor-style conversion (uint8 → float32 ÷ 255) and Normalize in torch, `torch.stack`;
- ours:     `tiling.tile_image` + `tiling.normalize` called per tile into the stacked array.

Outputs are asserted identical before anything is timed. The goal: ours within 1.25× of the floor,
summed over the golden photographs. The last lines time layouts from image headers alone.

Run: `.venv/bin/python bench/tiling.py [--repeat N]` (or `make bench`).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_shapes  # noqa: E402
from pipeline import images, layout, tiling  # noqa: E402

GOLDEN_IMAGES = ROOT / "tests" / "golden" / "images"
# Extra sizes made from the golden photographs: a range of canvases, both encodings.
EXTRA_SIZES = [(256, 256, "PNG"), (640, 480, "JPEG"), (1024, 768, "JPEG"), (1920, 1080, "JPEG"),
               (3000, 2000, "JPEG"), (1200, 1600, "PNG"), (2560, 320, "PNG")]  # fmt: skip


def floor(image: Image.Image, shape: model_shapes.ModelShape) -> None:
    size = shape.image_size
    best = tiling.select_best_resolution(image.size, tiling.candidate_resolutions(shape))
    for box in ((size, size), best):
        fit = tiling.contain_size(image.size, box)
        if min(fit) > 0:
            image.resize(fit, resample=Image.Resampling.BICUBIC)


def baseline(image: Image.Image, shape: model_shapes.ModelShape) -> torch.Tensor:
    size = shape.image_size
    color = tuple(int(m * 255) for m in shape.image_mean)
    mean = torch.tensor(shape.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(shape.image_std, dtype=torch.float32).view(3, 1, 1)

    def to_tensor(pil: Image.Image) -> torch.Tensor:
        chw = torch.from_numpy(np.array(pil, copy=True)).permute(2, 0, 1).contiguous()
        return chw.to(torch.float32).div(255).sub_(mean).div_(std)

    best_w, best_h = tiling.select_best_resolution(image.size, tiling.candidate_resolutions(shape))
    tiles = [to_tensor(ImageOps.pad(image, (size, size), color=color))]
    canvas = ImageOps.pad(image, (best_w, best_h), color=color)
    for top in range(0, best_h, size):
        for left in range(0, best_w, size):
            tiles.append(to_tensor(canvas.crop((left, top, left + size, top + size))))
    return torch.stack(tiles)


def ours(image: Image.Image, shape: model_shapes.ModelShape) -> np.ndarray:
    tiles = tiling.tile_image(image, shape)
    size = shape.image_size
    out = np.empty((tiles.n_tiles, 3, size, size), dtype=np.float32)
    tiling.normalize(tiles.global_view, shape.image_mean, shape.image_std, out=out[0])
    for index, view in enumerate(tiles.local_views, start=1):
        tiling.normalize(view, shape.image_mean, shape.image_std, out=out[index])
    return out


def best_ms(function: Callable[[], object], repeat: int) -> float:
    return best_of_rounds([function], repeat)[0]


def best_of_rounds(functions: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time in ms of each function over `repeat` rounds; each round runs all of them in turn,
    so that a slow spell of the machine hits every contender alike."""
    best = [float("inf")] * len(functions)
    for _ in range(repeat):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return [seconds * 1e3 for seconds in best]


def load_images() -> list[tuple[str, bytes, str]]:
    """(name, encoded bytes, set) for the golden photographs and sized variants of them."""
    found = []
    for path in sorted(GOLDEN_IMAGES.glob("*.png")):
        found.append((path.stem, path.read_bytes(), "golden"))
    source = Image.open(GOLDEN_IMAGES / "skimage_astronaut.png").convert("RGB")
    for width, height, fmt in EXTRA_SIZES:
        buffer = io.BytesIO()
        source.resize((width, height), resample=Image.Resampling.BICUBIC).save(buffer, format=fmt, quality=90)
        found.append((f"astronaut_{width}x{height}.{fmt.lower()}", buffer.getvalue(), "sizes"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the best counts")
    parser.add_argument("--shape", default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = model_shapes.load(args.shape)

    header = ("image", "set", "size", "grid", "floor ms", "baseline ms", "ours ms", "ours/floor", "base/ours")
    rows = []
    totals: dict[str, list[float]] = {}
    for name, data, group in load_images():
        image = tiling.to_rgb(images.decode(data))  # the official loader's convert("RGB"), outside timing
        expected = baseline(image, shape).numpy()
        got = ours(image, shape)
        if not np.array_equal(expected, got):
            raise SystemExit(f"{name}: tiles differ from the official path; nothing timed")
        timings = best_of_rounds(
            [
                lambda image=image: floor(image, shape),
                lambda image=image: baseline(image, shape),
                lambda image=image: ours(image, shape),
            ],
            args.repeat,
        )
        for key in (group, "all"):
            totals.setdefault(key, [0.0, 0.0, 0.0])
            totals[key] = [a + b for a, b in zip(totals[key], timings, strict=True)]
        grid = tiling.best_grid(image.size, shape)
        rows.append((name, group, f"{image.width}×{image.height}", f"{grid[0]}×{grid[1]}", *_cells(timings)))
    for key, timings in totals.items():
        rows.append((f"TOTAL {key}", key, "", "", *_cells(timings)))

    print(f"tiling: one thread, best of {args.repeat}; identical outputs asserted first; shape {shape.name}")
    _print_table(header, rows)
    golden = totals["golden"]
    count = sum(1 for *_, group in load_images() if group == "golden")
    print(
        f"\ngolden photos: ours {count / golden[2] * 1e3:.1f} images/s per core, "
        f"baseline {count / golden[1] * 1e3:.1f}; ours/floor {golden[2] / golden[0]:.2f} (goal ≤ 1.25)"
    )

    # Layouts from headers only: no pixel is decoded.
    encoded = [data for _, data, _ in load_images()]

    def layouts_from_headers() -> None:
        for data in encoded:
            grid = tiling.best_grid(images.read_header(data).size, shape)
            layout.image_token_count(grid, shape)

    def layouts_from_pixels() -> None:
        for data in encoded:
            layout.image_token_count(tiling.best_grid(images.decode(data).size, shape), shape)

    header_ms = best_ms(layouts_from_headers, args.repeat) / len(encoded)
    decode_ms = best_ms(layouts_from_pixels, args.repeat) / len(encoded)
    print(
        f"layout from header: {header_ms:.3f} ms/image; after a full decode: {decode_ms:.2f} ms/image "
        f"({decode_ms / header_ms:.0f}× slower)"
    )


def _cells(timings: list[float]) -> tuple[str, ...]:
    floor_ms, base_ms, ours_ms = timings
    return (
        f"{floor_ms:.2f}",
        f"{base_ms:.2f}",
        f"{ours_ms:.2f}",
        f"{ours_ms / floor_ms:.2f}",
        f"{base_ms / ours_ms:.2f}",
    )


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        cells = zip(line, widths, strict=True)
        print("  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(cells)).rstrip())


if __name__ == "__main__":
    main()
