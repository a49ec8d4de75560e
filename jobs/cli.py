"""The `vl2prep` command line.

Subcommands:
- `vl2prep tile IMAGE...`: tile each image exactly as the DeepSeek-VL2 processor does and print its
  grid, tile count and visual-token layout as a table (the end-to-end slice `make demo` runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXAMPLE_IMAGES = Path(__file__).resolve().parent / "examples" / "images"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vl2prep` console script; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="vl2prep",
        description="Data preparation for DeepSeek-VL2-style vision-language models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tile = commands.add_parser(
        "tile",
        help="tile images and print their exact visual-token layouts",
        description="Tile each image as the official DeepSeek-VL2 processor does and print, per image, the "
        "chosen canvas, the grid, the tiles and the number of <image> tokens, checked against its layout.",
    )
    tile.add_argument(
        "images",
        nargs="*",
        type=Path,
        help=f"image files (default: the bundled examples in {EXAMPLE_IMAGES})",
    )
    tile.add_argument(
        "--shape", default="tiny", help="tiny | small | base | toy | a shape or config.json file"
    )
    tile.add_argument(
        "--images-per-sample",
        type=int,
        default=1,
        metavar="N",
        help="images in the sample the image belongs to; above 2 the official processor stops cropping "
        "(default 1)",
    )
    tile.set_defaults(run=_run_tile)

    args = parser.parse_args(argv)
    return args.run(args, parser)


def _run_tile(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Imported here so that `vl2prep --help` stays fast.
    import model_shapes
    from pipeline import images, layout, tiling

    try:
        shape = model_shapes.load(args.shape)
    except model_shapes.ShapeError as error:
        parser.error(f"--shape: {error}")
    if args.images_per_sample < 1:
        parser.error("--images-per-sample must be at least 1")
    paths = args.images or sorted(p for p in EXAMPLE_IMAGES.iterdir() if p.is_file())
    cropping = args.images_per_sample <= 2

    header = ("image", "format", "mode", "size", "canvas", "grid", "tiles", "tokens", "padding", "tile ms")
    rows: list[tuple[str, ...]] = []
    failures = 0
    total_tokens = 0
    header_seconds = 0.0
    for path in paths:
        try:
            start = time.perf_counter()
            info = images.read_header(path)
            grid = tiling.best_grid(info.size, shape, cropping=cropping)
            tokens = layout.image_token_count(grid, shape)
            header_seconds += time.perf_counter() - start

            image = images.decode(path)
            start = time.perf_counter()
            tiles = tiling.tile_image(image, shape, cropping=cropping)
            pixels = tiling.normalize(tiles.stacked(), shape.image_mean, shape.image_std)
            tile_ms = (time.perf_counter() - start) * 1e3
        except images.ImageError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        # The layout from the header alone must agree with the tiles made from the pixels.
        lay = layout.image_layout(tiles.grid, shape)
        if tiles.grid != grid or len(lay) != tokens or lay.n_tiles != len(pixels):
            print(f"{path}: layout from the header disagrees with the tiles", file=sys.stderr)
            failures += 1
            continue
        total_tokens += tokens
        canvas = (grid[0] * shape.image_size, grid[1] * shape.image_size)
        fit = tiling.contain_size(info.size, canvas)
        padding = 1.0 - (fit[0] * fit[1]) / (canvas[0] * canvas[1])
        rows.append(
            (
                path.name,
                info.format,
                info.mode,
                f"{info.width}×{info.height}",
                f"{canvas[0]}×{canvas[1]}",
                f"{grid[0]}×{grid[1]}",
                str(lay.n_tiles),
                str(tokens),
                f"{padding:.0%}",
                f"{tile_ms:.1f}",
            )
        )

    _print_table(header, rows)
    mode = "cropping on" if cropping else "cropping off (more than 2 images per sample)"
    print(
        f"\n{len(rows)} images, {total_tokens} <image> tokens, shape {shape.name} "
        f"(tile {shape.image_size}px, {len(shape.candidate_resolutions)} candidate canvases), {mode}."
    )
    if rows:
        print(
            f"Layouts from headers alone: {header_seconds / len(rows) * 1e3:.2f} ms per image "
            "(no pixel decode)."
        )
    return 1 if failures else 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(header))] if rows else []
    for line in (header, *rows):
        cells = [
            cell.rjust(width) if numeric and numeric[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _is_number(text: str) -> bool:
    return text.rstrip("%").replace(".", "", 1).isdigit()


if __name__ == "__main__":
    sys.exit(main())
