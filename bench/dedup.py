"""Benchmark: deduplication (`pipeline.dedup`) on 1 and 2 worker processes against a plain-Python dict.

A caption corpus is generated in memory (fixed seed): `--samples` samples in `--partitions` partitions
of `schemas.sample` rows, each an image of `--image-bytes` random bytes and a caption of 8-16 words.
`--duplicates` of the samples (10% by default) are planted copies of a random earlier sample: half
repeat its image bytes under a new caption, half its caption (case and whitespace changed) on a new
image. (A copy taken from a sample that is itself overwritten later can end up unique, so a few
fewer than planted are dropped.) Every source dedups `by: [image, text]` across sources, bytes identity.

Timed, best of `--repeat` interleaved rounds, each over the whole corpus:

- dict:   the named baseline: one process, for each partition the image bytes and caption texts as
          Python lists, sha256 of each image, `normalize_text` of each caption, and a first-occurrence
          dict over (kind, value) in (partition, row) order, every sample's keys registered;
- ours:   `sample_keys` per partition and `bucket_of` + `find_duplicates` per bucket (`--buckets`),
          both spread over a `multiprocessing` pool (fork) of 1 and of 2 workers, then `one_per_sample`,
          as the job does on Ray. The pool is started before the clock; tables travel by pickle.

- ray:    the job's own stage (`jobs.dedup.run_dedup`) on an embedded Ray of 1 and of 2 CPUs, over the
          same keys staged as one Parquet file per partition: the hash-partitioned shuffle through the
          object store, `find_duplicates` per bucket and the per-partition duplicate files. Key building
          is left out (the job does it in its sequence actors, as `sample_keys` above), Ray's start is
          outside the clock.

Every run must drop exactly the samples the baseline drops. Prints a markdown table: seconds, samples/s,
the speed against 1 worker and against the dict baseline (> 1: faster); then the speed-up of a data-free
busy loop on the same pools, timed in the same rounds: on a shared machine it shows how much of the
second core was free, the ceiling for the 2-worker ratio.

Run: `.venv/bin/python bench/dedup.py [--samples N] [--repeat N]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs import dedup as stage  # noqa: E402
from jobs.ray_runtime import start_ray, stop_ray, task_cpus  # noqa: E402
from pipeline import dedup, shards  # noqa: E402
from schemas import sample as sample_schema  # noqa: E402

OPTIONS = dedup.DedupOptions(by=("image", "text"))

# The corpus, built before any pool is forked, so that workers share it without copying.
CORPUS: list[pa.Table] = []


def make_corpus(samples: int, partitions: int, image_bytes: int, duplicates: float) -> list[pa.Table]:
    """`partitions` sample tables of captioned images, with planted image and text duplicates."""
    rng = np.random.default_rng(0)
    vocabulary = [f"w{number}" for number in range(4000)]
    lengths = rng.integers(8, 17, samples)
    picks = rng.integers(0, len(vocabulary), int(lengths.sum()))
    ends = np.cumsum(lengths)
    captions = [
        " ".join(vocabulary[i] for i in picks[end - n : end]) for n, end in zip(lengths, ends, strict=True)
    ]
    blobs = rng.integers(0, 256, (samples, image_bytes), dtype=np.uint8)
    images = [row.tobytes() for row in blobs]
    planted = rng.choice(np.arange(1, samples), int(samples * duplicates), replace=False)
    for number, position in enumerate(planted):
        original = int(rng.integers(0, position))
        if number % 2:
            images[position] = images[original]
        else:
            captions[position] = "  " + captions[original].upper().replace(" ", " \t ") + " "
    bounds = np.linspace(0, samples, partitions + 1).astype(int)
    return [
        _sample_table(f"src{index % 2}", captions[start:end], images[start:end], start)
        for index, (start, end) in enumerate(itertools.pairwise(bounds.tolist()))
    ]


def _sample_table(source: str, captions: list[str], images: list[bytes], first: int) -> pa.Table:
    """Caption samples as a `schemas.sample` table, built column-wise."""
    n = len(captions)
    keys = [f"part-{first + i}.parquet#0" for i in range(n)]
    segments = pa.StructArray.from_arrays(
        [
            pa.array(np.zeros(2 * n, np.int32)),
            pa.nulls(2 * n, pa.string()),
            pa.array(["image", "text"] * n),
            pa.array([value for caption in captions for value in (None, caption)], pa.string()),
            pa.array([value for _ in range(n) for value in (0, None)], pa.int32()),
        ],
        fields=list(sample_schema.SEGMENT),
    )
    pictures = pa.StructArray.from_arrays(
        [
            pa.array(images, pa.binary()),
            pa.array([f"{key}.jpg" for key in keys]),
            pa.array(np.full(n, 640, np.int32)),
            pa.array(np.full(n, 480, np.int32)),
            pa.array(["JPEG"] * n),
        ],
        fields=list(sample_schema.IMAGE),
    )
    columns = [
        pa.array([sample_schema.sample_id_for(source, key) for key in keys]),
        pa.array([source] * n),
        pa.array(keys),
        pa.array(["caption"] * n),
        pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), segments),
        pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pictures),
        pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], sample_schema.REGION)),
        pa.array(["{}"] * n),
    ]
    return pa.Table.from_arrays(columns, schema=sample_schema.SCHEMA)


def dict_baseline() -> set[tuple[int, int]]:
    """(partition, row) of every dropped sample, by a first-occurrence dict in one process."""
    seen: dict[tuple[str, object], tuple[int, int]] = {}
    dropped = set()
    for partition, table in enumerate(CORPUS):
        images = table["images"].combine_chunks().flatten().field("bytes").to_pylist()
        texts = table["content"].combine_chunks().flatten().field("text").to_pylist()[1::2]
        for row, (data, caption) in enumerate(zip(images, texts, strict=True)):
            here = (partition, row)
            image_first = seen.setdefault(("image", hashlib.sha256(data).digest()), here)
            text_first = seen.setdefault(("text", dedup.normalize_text(caption)), here)
            if image_first != here or text_first != here:
                dropped.add(here)
    return dropped


def busy_loop(steps: int) -> int:
    """Pure-Python work with no data: what 2 processes gain on it is the machine's parallelism now."""
    total = 0
    for step in range(steps):
        total += step
    return total


def keys_of(partition: int) -> pa.Table:
    return dedup.sample_keys(CORPUS[partition], OPTIONS, partition)


def ours(pool: multiprocessing.pool.Pool, buckets: int) -> set[tuple[int, int]]:
    """(partition, row) of every dropped sample, by `pipeline.dedup` spread over `pool`."""
    keys = pa.concat_tables(pool.map(keys_of, range(len(CORPUS))))
    bucket = dedup.bucket_of(keys, buckets).to_numpy()
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1)).tolist()
    # One take per bucket: a pickled slice would carry its whole parent's buffers.
    parts = [keys.take(order[start:end]) for start, end in itertools.pairwise(bounds)]
    duplicates = dedup.one_per_sample(pa.concat_tables(pool.map(dedup.find_duplicates, parts)))
    return set(zip(duplicates["partition"].to_pylist(), duplicates["row"].to_pylist(), strict=True))


def ray_stage(cpus: int, repeat: int, folder: str) -> tuple[float, set[tuple[int, int]]]:
    """Best seconds of the job's dedup stage on an embedded Ray of `cpus` CPUs, and what it dropped."""
    import ray  # start_ray below sets Ray's environment, also for a ray imported before it

    out = shards.OutputDir(folder)
    keyed = []
    for partition in range(len(CORPUS)):
        path = f"{shards.STAGING}/keys/{partition}.parquet"
        if not out.exists(path):
            out.write_table(path, keys_of(partition), "none")
        keyed.append((partition, str(partition), path))
    total = sum(out.read_table(path).num_rows for _, _, path in keyed)
    ray.data.DataContext.get_current().enable_progress_bars = False
    start_ray(num_cpus=cpus)
    try:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            stage.run_dedup(folder, keyed, total, cpus=cpus, task_cpus=task_cpus())
            best = min(best, time.perf_counter() - started)
        dropped = set()
        for _, partition_id, _ in keyed:
            found = stage.staged_duplicates(out, partition_id)
            if found is not None:
                dropped |= set(zip(found["partition"].to_pylist(), found["row"].to_pylist(), strict=True))
    finally:
        stop_ray()
    return best, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--image-bytes", type=int, default=1024)
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    CORPUS.extend(make_corpus(args.samples, args.partitions, args.image_bytes, args.duplicates))
    made_s = time.perf_counter() - started
    print(f"corpus: {args.samples} samples in {args.partitions} partitions, made in {made_s:.1f} s")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    context = multiprocessing.get_context("fork")
    with context.Pool(1) as one_worker, context.Pool(2) as two_workers:
        runs = {
            ("dict (baseline)", 1): dict_baseline,
            ("pipeline.dedup", 1): lambda: ours(one_worker, args.buckets),
            ("pipeline.dedup", 2): lambda: ours(two_workers, args.buckets),
        }
        best = dict.fromkeys(runs, float("inf"))
        ceiling = {1: float("inf"), 2: float("inf")}
        expected = None
        for _ in range(args.repeat):
            for workers, pool in ((1, one_worker), (2, two_workers)):
                started = time.perf_counter()
                pool.map(busy_loop, [1_000_000] * 16)
                ceiling[workers] = min(ceiling[workers], time.perf_counter() - started)
            for name, run in runs.items():
                started = time.perf_counter()
                dropped = run()
                best[name] = min(best[name], time.perf_counter() - started)
                expected = dropped if expected is None else expected
                if dropped != expected:
                    raise SystemExit(f"{name} dropped {len(dropped)} samples, the baseline {len(expected)}")

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for cpus in (1, 2):
            seconds, dropped = ray_stage(cpus, args.repeat, folder)
            if dropped != expected:
                raise SystemExit(
                    f"the Ray stage on {cpus} CPUs dropped {len(dropped)}, the baseline {len(expected)}"
                )
            best[("jobs.dedup on Ray, shuffle only", cpus)] = seconds
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    share = len(expected) / args.samples
    print(f"\ndropped: {len(expected)} of {args.samples} ({share:.1%}); best of {args.repeat}, interleaved\n")
    baseline_s = best[("dict (baseline)", 1)]
    print("| run | processes / CPUs | seconds | samples/s | vs 1 | vs dict |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, workers), seconds in best.items():
        versus_one = "—" if name == "dict (baseline)" else f"{best[(name, 1)] / seconds:.2f}"
        print(
            f"| {name} | {workers} | {seconds:.2f} | {args.samples / seconds:,.0f} | {versus_one} "
            f"| {baseline_s / seconds:.2f} |"
        )
    print(
        f"\nparallelism available: 2 processes ran a pure-Python busy loop {ceiling[1] / ceiling[2]:.2f}× "
        "as fast as 1 (the ceiling for `vs 1 process` on this machine now)"
    )


if __name__ == "__main__":
    main()
