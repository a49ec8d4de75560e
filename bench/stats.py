"""Benchmark: the statistics pass, on one file and over many.

One file: `jobs.stats.file_partial` (scan, `pipeline.stats.shard_partial`, merge) against a plain pyarrow
scan of the same columns, on one synthetic shard file, one thread, best of --repeat. Rows look like captioned
images: one or two images (official grids and span lengths of the `tiny` shape), a few boxes, 30-300 text
tokens. The goal: the stats pass within 2x of the scan. The characters-per-token sample decodes with the
default tokenizer of tiny (DeepSeek-VL2's), as the job does.

Many files (--shards, e.g. 100,1000,10000): the job's whole Ray pass (`jobs.stats._partials`: one task per
file, results gathered in a bounded window and added in place) over that many small synthetic shards of
--shard-rows text rows whose ids spread over the whole vocabulary, as a corpus's do; the goal is a time per
shard that stays flat. Baseline, in the same run: the former driver loop, one `ray.wait(num_returns=1)` per
file over all the pending tasks and a `pipeline.stats.merge` that copies the merged partial per file (on
--baseline-max shards at most). Then the merge alone, one file's partial into a merged one that has seen
every id: the former `Counter` sum (a copy of every distinct id per file) against `Partial.add`.

Run: `.venv/bin/python bench/stats.py [--rows N] [--repeat N] [--shards 100,1000,10000] [--num-cpus N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_shapes  # noqa: E402
from jobs import stats as stats_job  # noqa: E402
from pipeline import layout, stats, tiling  # noqa: E402
from pipeline import tokenizer as tokenizers  # noqa: E402
from schemas import shard as shard_schema  # noqa: E402


def make_rows(n: int, shape: model_shapes.ModelShape) -> list[dict]:
    rng = np.random.default_rng(0)
    special = shape.special_tokens
    rows = []
    for index in range(n):
        sizes = [
            (int(rng.integers(64, 2048)), int(rng.integers(64, 2048))) for _ in range(rng.integers(1, 3))
        ]
        grids = [tiling.best_grid(size, shape) for size in sizes]
        ids, offsets = [special.bos], []
        for grid in grids:
            offsets.append(len(ids))
            ids += [special.image] * layout.image_token_count(grid, shape)
        ids += [*rng.integers(3, 4000, int(rng.integers(30, 300))).tolist(), special.eos]
        image_tokens = len(ids) - len(ids[offsets[-1] + layout.image_token_count(grids[-1], shape) :]) - 1
        rows.append(
            {
                "sample_id": f"s{index}",
                "source": "bench",
                "key": str(index),
                "kind": "caption",
                "part": 0,
                "input_ids": ids,
                "labels": ids,
                "images": [
                    {"bytes": b"\0" * 2048, "path": "x", "format": "JPEG", "width_px": w, "height_px": h}
                    for w, h in sizes
                ],
                "images_spatial_crop": [list(g) for g in grids],
                "image_token_offsets": offsets,
                "regions": [{"phrase": "a", "image": 0, "boxes": [[1.0, 2.0, 30.0, 40.0]] * 3}],
                "num_image_tokens": image_tokens,
                "num_text_tokens": len(ids) - image_tokens,
                "num_loss_tokens": len(ids) - image_tokens,
                "seq_len": len(ids),
                "truncated": False,
                "special_strings_as_text": 0,
                "tokenizer_sha256": "t",
                "shape_fingerprint": "f",
                "position_ids": None,
                "cu_seqlens": None,
                "documents": None,
            }
        )
    return rows


def write_small_shards(folder: Path, count: int, rows: int, shape: model_shapes.ModelShape) -> list[str]:
    """`count` shard files of `rows` text rows each, 256 ordinary ids per row drawn over the vocabulary."""
    rng = np.random.default_rng(count)
    special = shape.special_tokens
    ordinary = min(special_ids_floor(shape), shape.language.vocab_size)
    template = shard_schema.to_table(
        [
            {
                **make_rows(1, shape)[0],
                "sample_id": f"r{index}",
                "kind": "text",
                "images": [],
                "images_spatial_crop": [],
                "image_token_offsets": [],
                "regions": [],
            }
            for index in range(rows)
        ]
    )
    length = 258
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * length)
    paths = []
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        ids = rng.integers(3, ordinary, (rows, length), dtype=np.int32)
        ids[:, 0], ids[:, -1] = special.bos, special.eos
        column = pa.ListArray.from_arrays(offsets, pa.array(ids.ravel()))
        table = template
        for name in ("input_ids", "labels"):
            table = table.set_column(table.schema.get_field_index(name), name, column)
        for name, value in (("num_image_tokens", 0), ("num_text_tokens", length), ("seq_len", length)):
            table = table.set_column(
                table.schema.get_field_index(name), name, pa.array([value] * rows, pa.int32())
            )
        path = f"shards/part-{index:05d}.parquet"
        pq.write_table(table.cast(shard_schema.SCHEMA), folder / path)
        paths.append(path)
    return paths


def special_ids_floor(shape: model_shapes.ModelShape) -> int:
    """The least special id above bos, eos and pad: ids from 3 up to it are ordinary text."""
    return min(i for i in stats.context_for(shape, 4096, None).special_ids if i > 2)


def former_pass(
    location: str, files: list[tuple[str, str]], context: stats.Context, spec, shape
) -> stats.Partial:
    """The driver loop before: every task submitted, one `ray.wait` per result, a copying merge per file."""
    import ray

    task = ray.remote(stats_job.file_partial).options(num_cpus=1)
    pending = [task.remote(location, path, what, context, spec, shape) for path, what in files]
    merged = stats.Partial()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        merged = stats.merge(merged, ray.get(done[0]))
    return merged


def scaling(args: argparse.Namespace, shape: model_shapes.ModelShape, context: stats.Context) -> None:
    from jobs.ray_runtime import ray_scope, start_ray

    counts = [int(n) for n in args.shards.split(",")]
    print(f"\nstats pass over many shards ({args.shard_rows} text rows each), Ray with {args.num_cpus} CPUs")
    print(f"{'shards':>8}{'pass s':>10}{'ms/shard':>10}{'former s':>10}{'ms/shard':>10}{'former/pass':>13}")
    with ray_scope(), tempfile.TemporaryDirectory() as folder:
        start_ray(None, args.num_cpus)
        warm = Path(folder) / "warm-up"  # workers started and the tokenizer loaded before any timing
        warm_files = [(path, "shard") for path in write_small_shards(warm, 16, args.shard_rows, shape)]
        stats_job._partials(str(warm), warm_files, context, ("default", None), shape, None, None)
        former_pass(str(warm), warm_files, context, ("default", None), shape)
        for count in counts:
            location = Path(folder) / f"n{count}"
            files = [(path, "shard") for path in write_small_shards(location, count, args.shard_rows, shape)]
            start = time.perf_counter()
            merged = stats_job._partials(str(location), files, context, ("default", None), shape, None, None)
            seconds = time.perf_counter() - start
            former = None
            if count <= args.baseline_max:
                start = time.perf_counter()
                again = former_pass(str(location), files, context, ("default", None), shape)
                former = time.perf_counter() - start
                assert stats.finalize(again, context, {}) == stats.finalize(merged, context, {})
            assert sum(cell.rows for cell in merged.cells.values()) == count * args.shard_rows
            row = f"{count:>8}{seconds:>10.2f}{1000 * seconds / count:>10.2f}"
            if former is not None:
                row += f"{former:>10.2f}{1000 * former / count:>10.2f}{former / seconds:>12.2f}x"
            print(row)


def merge_cost(context: stats.Context, files: int = 50) -> None:
    """One file's partial (2,048 text tokens) merged into one that has counted every id of the vocabulary."""
    vocab = context.vocab_size
    rng = np.random.default_rng(1)
    seen = stats.Cell(token_ids=np.ones(vocab, np.int64))
    merged = stats.Partial(cells={("web", "text"): seen})
    pieces = [
        stats.Partial(
            cells={
                ("web", "text"): stats.Cell(
                    token_ids=np.bincount(rng.integers(3, vocab, 2048), minlength=vocab)
                )
            }
        )
        for _ in range(files)
    ]
    former_merged = Counter(dict.fromkeys(range(vocab), 1))
    former_pieces = [Counter(rng.integers(3, vocab, 2048).tolist()) for _ in range(files)]
    start = time.perf_counter()
    for piece in former_pieces:
        former_merged = former_merged + piece  # the former Cell.__add__ of the token Counter
    former = (time.perf_counter() - start) / files
    start = time.perf_counter()
    for piece in pieces:
        merged.add(piece)
    now = (time.perf_counter() - start) / files
    print(f"\nmerge of one file's partial into one that has seen all {vocab:,} ids ({files} files)")
    print(f"{'merge':<34}{'ms/file':>10}")
    print(f"{'former: token Counter summed':<34}{1000 * former:>10.3f}")
    print(f"{'Partial.add: token array in place':<34}{1000 * now:>10.3f}")
    print(f"{'former / now':<34}{former / now:>9.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shards", default="100,1000,10000", help="shard counts of the many-files pass")
    parser.add_argument("--shard-rows", type=int, default=8)
    parser.add_argument("--baseline-max", type=int, default=10000, help="most shards the former loop gets")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    tokenizer = tokenizers.load("default", model_shapes.load("tiny"))
    shape = tokenizer.shape
    context = stats.context_for(shape, 4096, tokenizer.byte_fallback_ids())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shards" / "part-00000.parquet"
        path.parent.mkdir()
        pq.write_table(shard_schema.to_table(make_rows(args.rows, shape)), path, compression="zstd")

        def scan() -> None:
            for batch in pq.ParquetFile(path).iter_batches(
                stats_job.BATCH_ROWS, columns=list(stats.SHARD_COLUMNS)
            ):
                batch.num_rows  # noqa: B018 - the read is the work

        def stats_pass() -> None:
            stats_job.file_partial(
                folder, "shards/part-00000.parquet", "shard", context, ("default", None), shape
            )

        results = {}
        for name, work in (("pyarrow scan", scan), ("stats pass", stats_pass)):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                work()
                times.append(time.perf_counter() - start)
            results[name] = min(times)
    scan_s = results["pyarrow scan"]
    print(f"{args.rows} rows of one shard file; best of {args.repeat}")
    print(f"{'pass':<14}{'seconds':>10}{'rows/s':>12}{'vs scan':>10}")
    for name, seconds in results.items():
        print(f"{name:<14}{seconds:>10.3f}{args.rows / seconds:>12.0f}{seconds / scan_s:>9.2f}x")
    merge_cost(context)
    if args.shards:
        scaling(args, shape, context)


if __name__ == "__main__":
    main()
