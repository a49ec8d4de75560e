"""Benchmark: the statistics pass (`jobs.stats.file_partial`: scan, `pipeline.stats.shard_partial`, merge)
against a plain pyarrow scan of the same columns, on one synthetic shard file, one thread, best of --repeat.

Rows look like captioned images: one or two images (official grids and span lengths of the `tiny` shape), a
few boxes, 30-300 text tokens. The goal: the stats pass within 2x of the scan. The characters-per-token sample
decodes with the default tokenizer of tiny (DeepSeek-VL2's), as the job does.

Run: `.venv/bin/python bench/stats.py [--rows N] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
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


if __name__ == "__main__":
    main()
