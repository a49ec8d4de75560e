"""The `vl2prep` command line.

Subcommands:
- `vl2prep pretokenize CONFIG.yaml [--overwrite]`: the main job (see `jobs.pretokenize`).
- `vl2prep tile IMAGE...`: tile each image exactly as the DeepSeek-VL2 processor does and print its
  grid, tile count and visual-token layout as a table (the end-to-end slice `make demo` runs).
- `vl2prep train-tokenizer --input FILES --vocab-size N --out PATH`: train a sentencepiece BPE tokenizer
  (byte fallback, no dummy prefix, ids 0-3 bos/eos/pad/unk) from text files, reproducibly.
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

    pretokenize = commands.add_parser(
        "pretokenize",
        help="turn the configured sources into pretokenized Parquet shards with a manifest",
        description="Read every source of CONFIG, build DeepSeek-VL2 token sequences and write Parquet "
        "shards, rejects and manifest.json to output.dir, on an embedded Ray (or the cluster in ray.address "
        "or RAY_ADDRESS). The config is checked completely before Ray starts. A killed run resumes where it "
        "stopped; a finished output is left alone unless --overwrite.",
    )
    pretokenize.add_argument("config", type=Path, help="the job's YAML config")
    pretokenize.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (of this or another config)"
    )
    pretokenize.set_defaults(run=_run_pretokenize)

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

    train = commands.add_parser(
        "train-tokenizer",
        help="train a sentencepiece BPE tokenizer from text files",
        description="Train a sentencepiece BPE model (byte fallback, no dummy prefix, ids 0-3 = "
        "bos/eos/pad/unk, no other special token) from text files, one sentence per line. The same input "
        "always gives the same file. With no --input, the text shipped for the default tokenizer is used.",
    )
    train.add_argument(
        "--input",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="UTF-8 text files, read in the order given (default: the shipped training text)",
    )
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="pieces in the model")
    train.add_argument("--out", type=Path, required=True, metavar="PATH", help="the .model file to write")
    train.add_argument(
        "--shape",
        default=None,
        help="check the trained model against this shape (tiny | small | base | toy | a file) after training",
    )
    train.set_defaults(run=_run_train_tokenizer)

    args = parser.parse_args(argv)
    return args.run(args, parser)


def _run_pretokenize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jobs import pretokenize
    from jobs.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"{args.config}: {error}", file=sys.stderr)
        return 2
    return pretokenize.run(config, overwrite=args.overwrite)


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


def _run_train_tokenizer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import model_shapes
    from pipeline import tokenizer

    shape = None
    if args.shape is not None:
        try:
            shape = model_shapes.load(args.shape)
        except model_shapes.ShapeError as error:
            parser.error(f"--shape: {error}")
    inputs = args.input or tokenizer.default_training_files()
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        parser.error(f"--input: no such file: {', '.join(missing)}")
    start = time.perf_counter()
    try:
        out = tokenizer.train_tokenizer(inputs, args.vocab_size, args.out)
    except tokenizer.TokenizerError as error:
        parser.error(str(error))
    seconds = time.perf_counter() - start
    print(f"{out}: {tokenizer.file_sha256(out)}")
    if shape is not None:
        try:
            loaded = tokenizer.load(out, shape)
        except tokenizer.TokenizerError as error:
            print(f"{out}: {error}", file=sys.stderr)
            return 1
        print(f"{loaded.piece_count} pieces, trained in {seconds:.2f} s; fits shape {shape.name}.")
    else:
        print(f"trained in {seconds:.2f} s.")
    return 0


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
