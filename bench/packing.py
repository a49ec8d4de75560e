"""Benchmark: packing with a vision budget (`pipeline.packing`) and the tile-balanced reader
(`pipeline.loader.ShardDataset(balance=...)`), each against its baseline measured in the same run.

The corpus is generated (fixed seed) for the `tiny` shape at max_seq_len 4096: captions (45%: one image,
15-80 text tokens), grounding (25%: one image, 40-250) and interleaved documents (30%: 1-6 images, 1×1 beyond
two as the official processor does, 150-2800 text tokens, cut at 4096). Image sizes spread like web
thumbnails (120-420 px), COCO photos (640×480, 640×427, portrait) and large photos (1100-4000 px, several
aspect ratios); grids come from `tiling.best_grid`, spans from `layout.image_token_count`, so most images are
1×1, 2×2 or 3×3. Rows are built directly (no tokenizer; image bytes only where the reader decodes them).

1. Packing: token-only packing (the baseline) against `max_tiles` budgets, all with the default buffer:
   rows, token fill, tile fill, the most tiles in a row, rows over the budget, records rejected as
   `too_many_tiles`, and packing throughput (documents/s, best of --repeat, one thread). "bound" is the
   token fill that no packing can pass: document tokens / (max_seq_len · the larger of the rows that the
   tokens and that the tiles need).
2. Balance: per-step imbalance over --world ranks (max over ranks of the tiles in the micro-batch / the
   mean over ranks), p50 and p99 over the steps of epoch 0, for `balance=None` (the baseline), "tiles" and
   "cost", on the packed rows (max_tiles 18) and the unpacked documents, written as outputs (images by
   reference: ordering reads only grids and lengths).
3. Reader overhead: what balancing adds per epoch (reading the tiles and tokens of every row when the
   dataset is made, and computing the order) against reading one rank's epoch of batches (rows read,
   images decoded and tiled: `ShardLoader`, no workers, timed on --read-batches and scaled to the epoch),
   on an output of the unpacked documents with JPEG bytes.

Run: `.venv/bin/python bench/packing.py [--docs N] [--repeat N]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_shapes  # noqa: E402
from pipeline import layout, loader, packing, shards, tiling  # noqa: E402
from pipeline.cost import CostModel  # noqa: E402
from schemas import shard as shard_schema  # noqa: E402
from schemas.sample import sample_id_for  # noqa: E402

SHAPE = model_shapes.load("tiny")
MAX_SEQ_LEN = 4096
BUDGETS = (12, 16, 18, 20)
BALANCED_BUDGET = 18
TEXT = {"caption": (15, 80), "grounding": (40, 250), "interleaved": (150, 2800)}


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    kind = rng.choice(3, p=[0.3, 0.45, 0.25])
    if kind == 0:
        return int(rng.integers(120, 420)), int(rng.integers(120, 420))
    if kind == 1:
        side = int(rng.choice([427, 480, 360, 425]))
        return (640, side) if rng.random() < 0.7 else (side, 640)
    longest = int(rng.integers(1100, 4000))
    ratio = float(rng.choice([1.0, 4 / 3, 3 / 4, 1.5, 2 / 3, 16 / 9]))
    return longest, int(longest / ratio)


def make_docs(count: int, seed: int = 0) -> list[dict]:
    """Unpacked shard rows of the mix (module docstring); images as references with their sizes."""
    rng = np.random.default_rng(seed)
    special = SHAPE.special_tokens
    docs = []
    for index in range(count):
        kind = str(rng.choice(list(TEXT), p=[0.45, 0.25, 0.30]))
        sizes = [image_size(rng) for _ in range(int(rng.integers(1, 7)) if kind == "interleaved" else 1)]
        grids = [tiling.best_grid(size, SHAPE, cropping=len(sizes) <= 2) for size in sizes]
        spans = [layout.image_token_count(grid, SHAPE) for grid in grids]
        seq_len = min(MAX_SEQ_LEN, sum(spans) + 2 + int(rng.integers(*TEXT[kind])))
        ids = np.full(seq_len, 7, dtype=np.int32)
        ids[0], ids[-1] = special.bos, special.eos
        offsets, at = [], 1
        for span in spans:
            ids[at : at + span] = special.image
            offsets.append(at)
            at += span
        key = f"{kind}{index}"
        docs.append(
            {
                "sample_id": sample_id_for("mix", key),
                "source": "mix",
                "key": key,
                "kind": kind,
                "part": 0,
                "input_ids": ids,
                "labels": ids.copy(),
                "images": [
                    {"bytes": None, "path": f"{w}x{h}.jpg", "format": "JPEG", "width_px": w, "height_px": h}
                    for w, h in sizes
                ],
                "images_spatial_crop": [list(grid) for grid in grids],
                "image_token_offsets": offsets,
                "regions": [],
                "num_image_tokens": sum(spans),
                "num_text_tokens": seq_len - sum(spans),
                "num_loss_tokens": seq_len - 1,
                "seq_len": seq_len,
                "truncated": False,
                "special_strings_as_text": 0,
                "tokenizer_sha256": "0" * 64,
                "shape_fingerprint": SHAPE.fingerprint(),
                "position_ids": None,
                "cu_seqlens": None,
                "documents": None,
            }
        )
    return docs


def pack_all(docs: list[dict], max_tiles: int | None) -> tuple[list[dict], packing.PackingStats, int, float]:
    """(packed rows, stats, records rejected, seconds) of packing `docs` as the job does per partition."""
    start = time.perf_counter()
    table = shard_schema.to_table(docs)
    rejected = 0
    if max_tiles is not None:
        table, rejects = packing.tile_budget_rejects(table, max_tiles)
        rejected = rejects.num_rows
    packer = packing.Packer(MAX_SEQ_LEN, SHAPE.special_tokens.pad, max_tiles=max_tiles)
    packed = [made for row in table.to_pylist() for made in packer.add(row)] + packer.flush()
    return packed, packer.stats, rejected, time.perf_counter() - start


def write_output(folder: Path, rows: list[dict]) -> str:
    """`rows` as a finished output folder (one source, a manifest) that `ShardDataset` reads."""
    out = shards.OutputDir(str(folder))
    writer = shards.ShardWriter(out, "shards/mix", shard_schema.SCHEMA, 2**30, row_group_rows=64)
    for start in range(0, len(rows), 256):
        writer.write(shard_schema.to_table(rows[start : start + 256]))
    listed = [{"source": "mix", **info.to_dict()} for info in writer.close()]
    out.write_json(
        "manifest.json",
        {"model_shape": {"name": "tiny", "fingerprint": SHAPE.fingerprint()}, "shards": listed},
    )
    return str(folder)


def step_imbalance(location: str, world: int, batch_size: int, balance: str | None) -> tuple[np.ndarray, ...]:
    """Per step of epoch 0: max/mean over ranks of the micro-batches' tiles, tokens and cost."""
    datasets = [
        loader.ShardDataset(location, batch_size, rank=r, world_size=world, balance=balance, shape=SHAPE)
        for r in range(world)
    ]
    table = columns(location)
    tiles = packing.row_tiles(table)
    tokens = table.column("seq_len").to_numpy().astype(np.int64)
    cost = CostModel.for_shape(SHAPE).total(tiles, tokens)
    per_rank = [d.rank_rows(0) for d in datasets]
    steps = min(len(rows) for rows in per_rank) // batch_size
    results = []
    for amount in (tiles, tokens, cost):
        loads = np.array(
            [
                [amount[rows[k * batch_size : (k + 1) * batch_size]].sum() for rows in per_rank]
                for k in range(steps)
            ],
            dtype=np.float64,
        )
        mean = loads.mean(axis=1)
        results.append(np.where(mean > 0, loads.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0))
    return tuple(results)


def columns(location: str) -> pa.Table:
    """The tiles' and lengths' columns of every row of an output, in manifest order."""
    out = shards.OutputDir(location)
    return pa.concat_tables(
        pq.read_table(out.path(entry["path"]), columns=["images_spatial_crop", "seq_len"])
        for entry in out.read_json("manifest.json")["shards"]
    )


def line(*cells: object) -> None:
    """One markdown table row."""
    print("| " + " | ".join(str(cell) for cell in cells) + " |")


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 32), max(1, width // 32), 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def with_bytes(docs: list[dict]) -> list[dict]:
    """`docs` with JPEG bytes of each image's size (one file per distinct size, shared)."""
    made: dict[tuple[int, int], bytes] = {}
    result = []
    for doc in docs:
        images = []
        for image in doc["images"]:
            size = (image["width_px"], image["height_px"])
            if size not in made:
                made[size] = jpeg(*size, seed=len(made))
            images.append({**image, "bytes": made[size]})
        result.append({**doc, "images": images})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents of the mix")
    parser.add_argument("--repeat", type=int, default=3, help="packing runs per setting; the best counts")
    parser.add_argument("--world", type=int, default=8, help="ranks")
    parser.add_argument(
        "--read-docs", type=int, default=1024, help="documents of the output the reader reads"
    )
    parser.add_argument("--read-batches", type=int, default=6, help="batches timed per reader run")
    args = parser.parse_args()

    docs = make_docs(args.docs)
    tokens = sum(d["seq_len"] for d in docs)
    tiles = sum(1 + w * h for d in docs for w, h in d["images_spatial_crop"])
    grids: dict[str, int] = {}
    for d in docs:
        for w, h in d["images_spatial_crop"]:
            grids[f"{w}x{h}"] = grids.get(f"{w}x{h}", 0) + 1
    top = ", ".join(
        f"{g} {n / sum(grids.values()):.0%}" for g, n in sorted(grids.items(), key=lambda i: -i[1])[:6]
    )
    print(
        f"mix: {len(docs)} documents, {tokens / len(docs):.0f} tokens and {tiles / len(docs):.2f} tiles each"
    )
    print(f"grids: {top}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")

    print("## Packing (max_seq_len 4096)\n")
    line("packing", "rows", "token fill", "bound", "tile fill", "most tiles", "rows over 16 / 18", "rejected")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    seconds: dict[int | None, list[float]] = {budget: [] for budget in (None, *BUDGETS)}
    for _ in range(args.repeat):  # interleaved rounds: every setting sees the same machine
        for budget in seconds:
            seconds[budget].append(pack_all(docs, budget)[3])
    rates = {budget: len(docs) / min(taken) for budget, taken in seconds.items()}
    packed_for_balance: list[dict] = []
    for budget in seconds:
        packed, stats, rejected, _ = pack_all(docs, budget)
        per_row = np.array([sum(1 + w * h for w, h in p["images_spatial_crop"]) for p in packed])
        needed = np.ceil(max(stats.tokens / MAX_SEQ_LEN, stats.tiles / budget if budget else 0))
        line(
            "tokens only" if budget is None else f"max_tiles {budget}",
            stats.rows,
            f"{stats.efficiency:.1%}",
            f"{stats.tokens / (MAX_SEQ_LEN * needed):.1%}",
            f"{stats.tile_fill:.1%}" if budget else "",
            per_row.max(),
            f"{(per_row > 16).sum()} / {(per_row > 18).sum()}",
            rejected,
        )
        if budget == BALANCED_BUDGET:
            packed_for_balance = packed
    print(f"\nthroughput, best of {args.repeat} interleaved rounds (budget check, packing, rows built):\n")
    line("packing", "documents/s", "vs tokens only")
    print("|---|---:|---:|")
    for budget, rate in rates.items():
        line(
            "tokens only" if budget is None else f"max_tiles {budget}",
            f"{rate:,.0f}",
            f"{rate / rates[None]:.2f}",
        )

    with tempfile.TemporaryDirectory() as scratch:
        folders = {
            f"packed (max_tiles {BALANCED_BUDGET})": write_output(
                Path(scratch) / "packed", packed_for_balance
            ),
            "unpacked": write_output(Path(scratch) / "docs", docs),
        }
        print(f"\n## Balance: per-step imbalance over {args.world} ranks, epoch 0 (max / mean over ranks)\n")
        line(
            "rows",
            "batch",
            "balance",
            "steps",
            "tiles p50",
            "tiles p99",
            "tokens p99",
            "cost p99",
            "p99 vs None",
        )
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for name, location in folders.items():
            for batch_size in (1, 4):
                base = None
                for balance in (None, "tiles", "cost"):
                    by_tiles, by_tokens, by_cost = step_imbalance(location, args.world, batch_size, balance)
                    p99 = np.percentile(by_tiles, 99)
                    base = base or p99
                    line(
                        name,
                        batch_size,
                        balance,
                        len(by_tiles),
                        f"{np.median(by_tiles):.3f}",
                        f"{p99:.3f}",
                        f"{np.percentile(by_tokens, 99):.3f}",
                        f"{np.percentile(by_cost, 99):.3f}",
                        f"{p99 / base:.2f}",
                    )

        print(f"\n## Reader overhead of balancing (rank 0 of {args.world}, batch 4, no workers)\n")
        location = write_output(Path(scratch) / "read", with_bytes(docs[: args.read_docs]))
        timings = {}
        for balance in (None, "tiles", "cost"):
            start = time.perf_counter()
            dataset = loader.ShardDataset(location, 4, world_size=args.world, balance=balance, shape=SHAPE)
            dataset.rank_rows(0)
            setup = time.perf_counter() - start
            reader = loader.ShardLoader(dataset)
            start = time.perf_counter()
            for count, _ in enumerate(reader, 1):
                if count == args.read_batches:
                    break
            per_batch = (time.perf_counter() - start) / args.read_batches
            timings[balance] = (setup, per_batch * len(dataset), len(dataset))
        line("balance", "setup + order s", "epoch read s (est.)", "batches", "overhead vs None")
        print("|---|---:|---:|---:|---:|")
        base_setup, base_epoch, _ = timings[None]
        for balance, (setup, epoch, batches) in timings.items():
            line(balance, f"{setup:.3f}", f"{epoch:.1f}", batches, f"{(setup - base_setup) / base_epoch:.2%}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
