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

Near duplicates (`--near`, run after the table above, or alone with `--only near`), the measures of
`image_near` on real-looking photos: the five photos of tests/golden/images and `--synthetic` generated
ones (smooth random fields with shapes, fixed seed). Distinct photos are non-overlapping square crops of
them (a third of the short side) and the synthetic images; each gets planted variants of every kind
(JPEG quality 20 and 10; resized 0.5x, 0.7x, 0.9x; brightness +10% and -10%; crops of 2% and 5% per side).
Printed: the distance distribution and recall per variant kind at `DEFAULT_NEAR_DISTANCE` (and at 6 and 14
for comparison), the false-positive rate on distinct photos (pairs within D, and images with any other
distinct image within D), the cost of the hash on top of a decode (full decode + `phash`, against the decode
alone, on 512-2048 px JPEGs), and the job's Ray stage (`run_dedup`) on the same `--near-samples` samples of
small JPEG photos keyed by `image` (exact) and by `image_near`, with the key-building cost of each.

Run: `.venv/bin/python bench/dedup.py [--samples N] [--repeat N] [--only exact|near|both]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs import dedup as stage  # noqa: E402
from jobs.ray_runtime import start_ray, stop_ray, task_cpus  # noqa: E402
from pipeline import dedup, phash, shards  # noqa: E402
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


# ------------------------------------------------------------------------------------------------
# near duplicates

PHOTOS = ROOT / "tests" / "golden" / "images"


def _encode(picture: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _decoded(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def _crop(share: float):
    def crop(picture: Image.Image) -> Image.Image:
        dx, dy = int(picture.width * share), int(picture.height * share)
        return picture.crop((dx, dy, picture.width - dx, picture.height - dy))

    return crop


VARIANTS = {
    "jpeg q20": lambda p: _decoded(_encode(p, "JPEG", quality=20)),
    "jpeg q10": lambda p: _decoded(_encode(p, "JPEG", quality=10)),
    "resize 0.5x": lambda p: p.resize((p.width // 2, p.height // 2), Image.Resampling.BILINEAR),
    "resize 0.7x": lambda p: p.resize((p.width * 7 // 10, p.height * 7 // 10), Image.Resampling.BICUBIC),
    "resize 0.9x": lambda p: p.resize((p.width * 9 // 10, p.height * 9 // 10), Image.Resampling.LANCZOS),
    "brightness +10%": lambda p: ImageEnhance.Brightness(p).enhance(1.1),
    "brightness -10%": lambda p: ImageEnhance.Brightness(p).enhance(0.9),
    "crop 2%": _crop(0.02),
    "crop 5%": _crop(0.05),
}


def synthetic_photo(rng: np.random.Generator, side: int = 256) -> Image.Image:
    """A smooth random colour field (blurred noise) with a few random shapes: photo-like low frequencies."""
    field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    picture = Image.fromarray(field).resize((side, side), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(2, 7))):
        x, y = rng.integers(0, side, 2)
        w, h = rng.integers(side // 10, side // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    return picture.filter(ImageFilter.GaussianBlur(1))


def distinct_photos(synthetic: int) -> list[Image.Image]:
    """Non-overlapping crops of the bundled photos and `synthetic` generated ones."""
    found = []
    for path in sorted(PHOTOS.glob("*.png")):
        if "grace_hopper" in path.name or "chelsea" in path.name or "skimage" in path.name:
            picture = Image.open(path).convert("RGB")
            side = min(picture.size) // 3
            for x in range(0, picture.width - side + 1, side):
                for y in range(0, picture.height - side + 1, side):
                    found.append(picture.crop((x, y, x + side, y + side)))
    rng = np.random.default_rng(0)
    return found + [synthetic_photo(rng) for _ in range(synthetic)]


def near_quality(synthetic: int) -> None:
    photos = distinct_photos(synthetic)
    hashes = np.array([phash.phash(p) for p in photos], np.uint64)
    print(f"\n### Near duplicates: {len(photos)} distinct photos, each with one variant of every kind\n")
    limits = (6, dedup.DEFAULT_NEAR_DISTANCE, 14)
    print(
        "| variant | median distance | 90th pct | max | "
        + " | ".join(f"recall at {d}" for d in limits)
        + " |"
    )
    print("|---|---:|---:|---:|" + "---:|" * len(limits))
    for name, make in VARIANTS.items():
        distances = phash.hamming_many(hashes, np.array([phash.phash(make(p)) for p in photos], np.uint64))
        recalls = " | ".join(f"{np.mean(distances <= d):.1%}" for d in limits)
        print(
            f"| {name} | {np.median(distances):.0f} | {np.percentile(distances, 90):.0f} | {distances.max()} "
            f"| {recalls} |"
        )
    pairwise = phash.hamming_many(hashes[:, None], hashes[None, :])
    upper = pairwise[np.triu_indices(len(photos), 1)]
    np.fill_diagonal(pairwise, 64)
    nearest = pairwise.min(axis=1)
    print("\n| distinct photos | " + " | ".join(f"at {d}" for d in limits) + " |")
    print("|---|" + "---:|" * len(limits))
    print(
        "| pairs within D | "
        + " | ".join(f"{np.mean(upper <= d):.3%} ({np.sum(upper <= d)})" for d in limits)
        + " |"
    )
    print(
        "| photos with another within D | "
        + " | ".join(f"{np.mean(nearest <= d):.1%} ({np.sum(nearest <= d)})" for d in limits)
        + " |"
    )
    print(f"\nsmallest distance between distinct photos: {upper.min()}; median {np.median(upper):.0f}")


def hash_cost(repeat: int) -> None:
    print("\n### Hash cost on top of the decode (one core, best of rounds)\n")
    print("| image | decode ms | decode + phash ms | phash share |")
    print("|---|---:|---:|---:|")
    astronaut = Image.open(PHOTOS / "skimage_astronaut.png").convert("RGB")
    for side in (512, 1024, 2048):
        data = _encode(astronaut.resize((side, side), Image.Resampling.BICUBIC), "JPEG", quality=90)
        decode = hashed = float("inf")
        for _ in range(repeat * 3):
            started = time.perf_counter()
            _decoded(data)
            decode = min(decode, time.perf_counter() - started)
            started = time.perf_counter()
            phash.phash(_decoded(data))
            hashed = min(hashed, time.perf_counter() - started)
        print(
            f"| JPEG {side}×{side} | {decode * 1e3:.2f} | {hashed * 1e3:.2f} "
            f"| {(hashed - decode) / decode:+.0%} |"
        )


def near_stage(samples: int, partitions: int, repeat: int) -> None:
    """The Ray stage on `samples` caption samples of 96 px JPEG photos, 20% planted variants, by image
    (exact) and by image_near."""
    rng = np.random.default_rng(1)
    base = [synthetic_photo(rng, 96) for _ in range(200)]
    images = []
    for number in range(samples):
        picture = base[number % len(base)] if number < len(base) else synthetic_photo(rng, 96)
        if number >= len(base) and rng.random() < 0.2:
            picture = ImageEnhance.Brightness(base[int(rng.integers(0, len(base)))]).enhance(1.05)
        images.append(_encode(picture, "JPEG", quality=80))
    captions = [f"caption {number}" for number in range(samples)]
    bounds = np.linspace(0, samples, partitions + 1).astype(int)
    tables = [
        _sample_table("src0", captions[a:b], images[a:b], a) for a, b in itertools.pairwise(bounds.tolist())
    ]
    import tempfile

    import ray

    rows = []
    for by in (("image",), ("image_near",)):
        options = dedup.DedupOptions(by=by)
        with tempfile.TemporaryDirectory() as folder:
            out = shards.OutputDir(folder)
            started = time.perf_counter()
            keyed, total = [], 0
            for order, table in enumerate(tables):
                keys = dedup.sample_keys(table, options, order)
                path = f"{shards.STAGING}/keys/{order}.parquet"
                out.write_table(path, keys, "none")
                keyed.append((order, str(order), path))
                total += keys.num_rows
            keys_s = time.perf_counter() - started
            ray.data.DataContext.get_current().enable_progress_bars = False
            start_ray(num_cpus=2)
            try:
                best = float("inf")
                for _ in range(repeat):
                    started = time.perf_counter()
                    dropped = stage.run_dedup(folder, keyed, total, cpus=2, task_cpus=task_cpus())
                    best = min(best, time.perf_counter() - started)
            finally:
                stop_ray()
        rows.append((by[0], keys_s, best, dropped))
    print(
        f"\n### The dedup stage on Ray (2 CPUs): {samples} samples of 96 px JPEGs, {partitions} partitions\n"
    )
    print("| by | keys s | keys samples/s | stage s | stage samples/s | stage vs exact | dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    exact_s = rows[0][2]
    for by, keys_s, stage_s, dropped in rows:
        print(
            f"| {by} | {keys_s:.2f} | {samples / keys_s:,.0f} | {stage_s:.2f} | {samples / stage_s:,.0f} "
            f"| {exact_s / stage_s:.2f} | {dropped} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--image-bytes", type=int, default=1024)
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("exact", "near", "both"), default="both")
    parser.add_argument("--synthetic", type=int, default=200)
    parser.add_argument("--near-samples", type=int, default=20_000)
    args = parser.parse_args()
    if args.only != "near":
        exact(args)
    if args.only != "exact":
        near_quality(args.synthetic)
        hash_cost(args.repeat)
        near_stage(args.near_samples, args.partitions, args.repeat)


def exact(args: argparse.Namespace) -> None:

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
