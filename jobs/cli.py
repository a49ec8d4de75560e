"""The `vl2prep` command line.

Subcommands:
- `vl2prep pretokenize CONFIG.yaml [--overwrite] [--allow-empty] [--verbose]`: the main job (see
  `jobs.pretokenize`). Every failure a user can cause ends in one line on stderr naming the file, key or row,
  and an exit code (`EXIT_CODES`); a job that wrote no row exits 1 unless `--allow-empty`; `--verbose` adds
  the traceback and lets Ray's own log lines and progress bars through.
- `vl2prep tile IMAGE...`: tile each image exactly as the DeepSeek-VL2 processor does and print its
  grid, tile count and visual-token layout as a table (the end-to-end slice `make demo` runs).
- `vl2prep verify OUT`: check every file of a finished output against its manifest and every row against the
  shard invariants (`pipeline.verify`); exit 1 with one line per problem, 0 with a short summary.
- `vl2prep inspect OUT [--row N | --sample-id ID]`: print one row for a person (`pipeline.inspect_rows`);
  exit 1 when there is no such row, 2 when the manifest or the shard cannot be read.
- `vl2prep stats OUT [--report-dir DIR]`: statistics of a finished output as a Ray job (`jobs.stats`):
  `stats.json`, `report.html` and `report.md` in `OUT/stats/` or DIR; exit 2 when the output, or a file it
  lists, cannot be read (the other files' statistics are still written), 5 when Ray cannot start.
- `vl2prep validate OUT [--shape S | --weights DIR] [--samples N|all] [--report-dir DIR] [--batch-size B]`:
  forward passes over a finished output on Ray actors (`jobs.validate`), by default over a bounded sample
  spread over the sources (`pipeline.validate.DEFAULT_SAMPLES` rows): `validation.json`, always written;
  exit 1 listing the failing sample ids and the files that could not be read, 2 when the output cannot be
  read, 5 when Ray cannot start.
- `vl2prep train-tokenizer --input FILES --vocab-size N --out PATH`: train a sentencepiece BPE tokenizer
  (byte fallback, no dummy prefix, ids 0-3 bos/eos/pad/unk) from text files, reproducibly.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

EXAMPLE_IMAGES = Path(__file__).resolve().parent / "examples" / "images"
EXIT_CODES = {
    0: "done (or already complete)",
    1: "the job failed (a bug or a cluster failure: rerun with --verbose for the traceback), or it wrote no "
    "row (no input record, or every record rejected: the line says how many; --allow-empty accepts that)",
    2: "the config, or what the output folder holds, must change (the message names the key or file)",
    3: "another job holds the output folder's lease, or this job lost it",
    4: "the output's storage refused a write: disk full, read-only, permission denied",
    5: "Ray could not be started, or the cluster not joined (the line says why: address, token)",
    130: "interrupted (rerun the same command to resume)",
}
"""The exit codes of `vl2prep pretokenize`."""
DEFAULT_VALIDATE_SAMPLES = 64
"""Rows `vl2prep validate` checks unless `--samples` says otherwise (`pipeline.validate.DEFAULT_SAMPLES`;
repeated here so that `vl2prep --help` does not import torch)."""
MESSAGE_LIMIT = 2000
"""Longest error line printed: a message never quotes megabytes of a config."""
_STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full: free space, then rerun the same command to resume",
    errno.EDQUOT: "the disk quota is used up: free space, then rerun the same command to resume",
    errno.EROFS: "the file system is read-only: choose a writable output.dir",
    errno.EACCES: "permission denied: choose an output.dir this user may write",
    errno.EPERM: "operation not permitted: choose an output.dir this user may write",
}


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
        "stopped; a finished output is left alone unless --overwrite, and one whose listed files are missing "
        "or resized is made again. One job at a time holds output.dir (a lease, _lease.json), and the job "
        "deletes only files it wrote. Exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
        + ".",
    )
    pretokenize.add_argument("config", type=Path, help="the job's YAML config")
    pretokenize.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (of this or another config): removes exactly the files its "
        "manifest and staging records list, its statistics files and its staging folder, nothing else",
    )
    pretokenize.add_argument(
        "--allow-empty",
        action="store_true",
        help="exit 0 when the job wrote no row (no input record, or every record rejected); without it that "
        "is exit 1",
    )
    pretokenize.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own log lines and progress bars, and print the traceback of a failure, not only its "
        "one line",
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
        "always gives the same file. With no --input, the text the demo tokenizer is trained from is used.",
    )
    train.add_argument(
        "--input",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="UTF-8 text files, read in the order given (default: the demo tokenizer's training text)",
    )
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="pieces in the model")
    train.add_argument("--out", type=Path, required=True, metavar="PATH", help="the .model file to write")
    train.add_argument(
        "--shape",
        default=None,
        help="check the trained model against this shape (tiny | small | base | toy | a file) after training",
    )
    train.set_defaults(run=_run_train_tokenizer)

    verify = commands.add_parser(
        "verify",
        help="check a finished output: checksums, row invariants and manifest counts",
        description="Recompute the size and sha256 of every shard and reject file the manifest lists, check "
        "every row (image spans and layouts, labels, ids below the vocabulary, counts, tokenizer and shape "
        "identities) and the manifest's per-source counts. Prints one line per problem (file, sample_id, "
        "what is wrong) and exits 1, or prints a short summary and exits 0. Streams: memory does not grow "
        "with the output.",
    )
    verify.add_argument("out", help="the output folder (holding manifest.json): a path or a URI")
    verify.add_argument("--shape", default=None, help="the model shape, when the manifest's is not a variant")
    verify.add_argument(
        "--max-problems", type=int, default=1000, metavar="N", help="print at most N problems (default 1000)"
    )
    verify.set_defaults(run=_run_verify)

    inspect = commands.add_parser(
        "inspect",
        help="print one row of an output: decoded text, image spans, label masking, boxes",
        description="Print one shard row: provenance, images with their grids, each grounding box as written "
        "(0-999) and in pixels of the original image, and the decoded sequence with image spans collapsed "
        "and the trained-on text between « and ».",
    )
    inspect.add_argument("out", help="the output folder (holding manifest.json): a path or a URI")
    which = inspect.add_mutually_exclusive_group()
    which.add_argument("--row", type=int, default=None, metavar="N", help="row N over all shards (default 0)")
    which.add_argument("--sample-id", default=None, metavar="ID", help="the row with this sample_id")
    inspect.add_argument(
        "--shape", default=None, help="the model shape, when the manifest's is not a variant"
    )
    inspect.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="the tokenizer file, when the config's is relative"
    )
    inspect.set_defaults(run=_run_inspect)

    stats = commands.add_parser(
        "stats",
        help="dataset statistics of a finished output: stats.json, report.html, report.md",
        description="Compute statistics over the shards and rejects of a finished output (one Ray task per "
        "file, partial aggregates merged on the driver) and write stats.json, a self-contained report.html "
        "with plots and a short report.md to OUT/stats/ (or --report-dir).",
    )
    stats.add_argument("out", help="the output folder (holding manifest.json): a path or a URI")
    stats.add_argument("--report-dir", default=None, metavar="DIR", help="write the files here instead")
    stats.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="the tokenizer file, when the config's is relative"
    )
    stats.set_defaults(run=_run_stats)

    validate = commands.add_parser(
        "validate",
        help="forward passes over a finished output: layouts, finite logits and losses, expert load",
        description="Run rows of the output (by default a fixed sample spread over its sources; --samples "
        "all: every row) through a DeepSeek-VL2 model in batches on Ray actors (a GPU each "
        "when the cluster has GPUs) and check per sample that the visual embeddings match the image tokens "
        "and their stored spans, images_spatial_crop matches the layout, logits and loss are finite and "
        "something is trained on; report expert load per MoE layer. Writes validation.json to OUT/stats/ "
        "(or --report-dir) and exits 1 listing the failing sample ids. Default model: a small seeded "
        "random-weight model with the output's vocabulary, special ids and image layout.",
    )
    validate.add_argument("out", help="the output folder (holding manifest.json): a path or a URI")
    model = validate.add_mutually_exclusive_group()
    model.add_argument(
        "--shape",
        default=None,
        help="tiny | small | base | toy | CONFIG.json, random weights; must keep the output's vocabulary, "
        "special ids and image layout",
    )
    model.add_argument(
        "--weights", default=None, metavar="DIR", help="an official checkpoint folder: real per-sample losses"
    )
    validate.add_argument(
        "--samples",
        type=_samples,
        default=DEFAULT_VALIDATE_SAMPLES,
        metavar="N|all",
        help=f"validate N rows spread evenly over the sources, drawn with a fixed seed, or all rows "
        f"(default {DEFAULT_VALIDATE_SAMPLES}: a forward pass takes about a second a row on a CPU)",
    )
    validate.add_argument("--report-dir", default=None, metavar="DIR", help="write the files here instead")
    validate.add_argument("--batch-size", type=int, default=2, metavar="B", help="rows per batch (default 2)")
    validate.set_defaults(run=_run_validate)

    args = parser.parse_args(argv)
    return args.run(args, parser)


def _run_pretokenize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jobs import pretokenize
    from jobs.config import load_config

    output_dir = None
    try:
        config = load_config(args.config)
        output_dir = config.output_dir
        return pretokenize.run(
            config,
            overwrite=args.overwrite,
            out_stream=sys.stdout,
            allow_empty=args.allow_empty,
            verbose=args.verbose,
        )
    except (Exception, KeyboardInterrupt) as error:
        if args.verbose:
            traceback.print_exc()
        code, line = failure(error, args.config, output_dir)
        print(line, file=sys.stderr)
        return code


def failure(error: BaseException, config: Path, output_dir: str | None = None) -> tuple[int, str]:
    """(exit code, one line) for an error of the pretokenize job on `config` (see `EXIT_CODES`); a storage
    error that names no file is said of `output_dir`."""
    from jobs.pretokenize import OutputError
    from jobs.ray_runtime import RayStartError
    from pipeline.errors import ConfigError
    from pipeline.shards import LeaseError

    if isinstance(error, KeyboardInterrupt):
        return 130, "pretokenize: interrupted; rerun the same command to resume"
    if isinstance(error, ConfigError):
        message = str(error)
        return 2, _one_line(message if str(config) in message else f"{config}: {message}")
    if isinstance(error, OutputError):
        return 2, _one_line(str(error))
    if isinstance(error, LeaseError):
        return 3, _one_line(str(error))
    if isinstance(error, RayStartError):
        return 5, _one_line(f"pretokenize: {error}")
    storage = next((e for e in _causes(error) if isinstance(e, OSError) and e.errno is not None), None)
    if storage is not None:
        where = storage.filename or output_dir
        what = storage.strerror or str(storage)
        code = errno.errorcode.get(storage.errno, f"errno {storage.errno}")
        hint = _STORAGE_HINTS.get(storage.errno, "check the output's storage, then rerun the same command")
        return 4, _one_line(f"pretokenize stopped: {where + ': ' if where else ''}{what} ({code}); {hint}")
    cause = error
    while isinstance(getattr(cause, "cause", None), BaseException):
        cause = cause.cause  # a Ray task error: the exception raised in the task
    text = str(cause).strip().splitlines()
    return 1, _one_line(
        f"pretokenize failed: {type(cause).__name__}: {text[0] if text else ''} "
        "(rerun with --verbose for the traceback)"
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what caused it: Ray's task errors (`cause`), then `raise ... from` and implicit
    chaining, each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__ or current.__context__


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


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
    cropping = tiling.cropping_for(args.images_per_sample)

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
        canvas_px, padding_px = tiling.padded_pixels(info.size[0], info.size[1], grid, shape.image_size)
        padding = float(padding_px[0] / canvas_px[0])
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
    inputs = args.input or tokenizer.demo_training_files()
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


def _run_verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pipeline import verify

    if args.max_problems < 1:
        parser.error("--max-problems must be at least 1")
    start = time.perf_counter()
    try:
        report = verify.verify(args.out, shape=args.shape, max_problems=args.max_problems)
    except verify.VerifyError as error:
        print(error, file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    if not report.ok:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        hidden = report.problem_count - len(report.problems)
        more = f" ({hidden} not shown)" if hidden else ""
        print(f"{args.out}: FAILED, {report.problem_count} problems{more}.", file=sys.stderr)
        return 1
    print(
        f"{args.out}: OK. {report.shard_files} shard files ({report.shard_rows} rows) and "
        f"{report.reject_files} reject files ({report.reject_rows} rows) match the manifest; every row's "
        f"invariants and the counts of {report.sources} sources hold ({seconds:.1f} s)."
    )
    return 0


def _run_inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pipeline import inspect_rows, verify
    from pipeline.shards import MANIFEST, OutputDir
    from pipeline.tokenizer import TokenizerError

    try:
        manifest = OutputDir(args.out).read_json(MANIFEST)
    except (OSError, ValueError) as error:
        print(f"{args.out}: cannot read {MANIFEST}: {error}", file=sys.stderr)
        return 2
    try:
        shape = verify.shape_for(manifest, args.shape)
        tokenizer = inspect_rows.tokenizer_for(manifest, shape, args.tokenizer)
        row = 0 if args.row is None and args.sample_id is None else args.row
        path, number, found = inspect_rows.find_row(args.out, row=row, sample_id=args.sample_id)
    except inspect_rows.UnreadableShard as error:
        print(_one_line(str(error)), file=sys.stderr)
        return 2
    except (verify.VerifyError, TokenizerError, LookupError) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"row {number} of {args.out} ({path})")
    print(inspect_rows.render_row(found, shape, tokenizer))
    return 0


def _run_stats(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jobs import stats
    from jobs.ray_runtime import RayStartError

    try:
        return stats.run(
            _absolute(args.out),
            report_dir=args.report_dir and _absolute(args.report_dir),
            tokenizer_path=args.tokenizer,
        )
    except RayStartError as error:
        print(_one_line(f"stats: {error}"), file=sys.stderr)
        return 5


def _samples(text: str) -> int | None:
    """`--samples`: a positive row count, or `all` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of rows nor 'all'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1 (or 'all')")
    return value


def _run_validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jobs import validate

    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    from jobs.ray_runtime import RayStartError

    try:
        return validate.run(
            _absolute(args.out),
            shape=args.shape,
            weights=args.weights,
            samples=args.samples,
            report_dir=args.report_dir and _absolute(args.report_dir),
            batch_size=args.batch_size,
        )
    except RayStartError as error:
        print(_one_line(f"validate: {error}"), file=sys.stderr)
        return 5


def _absolute(location: str) -> str:
    """A local path made absolute (a URI as given): the Ray tasks that read it do not share this process's
    working directory (a Ray started elsewhere, another node)."""
    return location if "://" in location else os.path.abspath(location)


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
