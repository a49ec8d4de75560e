"""The pretokenize job's deduplication stage: a hash-partitioned shuffle of the staged dedup keys on Ray.

Each finished partition staged the keys of its surviving samples (`pipeline.dedup.sample_keys`, under
`_staging/keys/`). Finding duplicates needs every copy of a key in one place, but never all keys in one
place, so the keys move in two shuffles through Ray's object store, as plain Ray tasks:

1. *map* (one task per group of partitions): read the staged keys, split the exact ones by
   `bucket_of(hash)` into one table per bucket, and turn the `image_near` ones into band rows
   (`band_rows`: an index row per band, probe rows within the band radius) split by `band_bucket_of`;
2. *reduce* (one task per bucket): `find_duplicates` over the exact keys of the bucket and
   `nearest_earlier` over its band rows, both split by partition group;
3. *write* (one task per partition group): `near_duplicates` (reading the group's own staged keys for the
   names and `near_distance` of its images) and `one_per_sample` per partition, staged as
   `_staging/duplicates/<partition id>.parquet`, which the commit removes from the output and turns into
   reject rows.

A task holds one group of key files, one bucket, or one group's duplicates: the bucket count grows with the
number of keys (`KEYS_PER_BUCKET`); no table of all keys or all hashes is ever in one place. The result does
not depend on the bucket count or the grouping: the kept copy of a key is always its first by (partition
order, row), and a near duplicate's nearest earlier image is chosen by (distance, partition, row, image).
The stage ends with the marker `_staging/dedup.json`: `duplicates` (samples dropped), `buckets`, and when
some source dedups by `image_near`, `near_duplicates` (samples dropped for a near image and no exact key)
and `near_distance_histogram` (65 counts: per image with an earlier candidate, its nearest candidate's
distance; see `pipeline.dedup`). A run interrupted inside the stage redoes it on resume.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import dedup, shards

__all__ = ["DONE", "DUPLICATES", "KEYS_PER_BUCKET", "duplicates_path", "run_dedup", "staged_duplicates"]

DONE = f"{shards.STAGING}/dedup.json"
DUPLICATES = f"{shards.STAGING}/duplicates"
KEYS_PER_BUCKET = 2_000_000
"""Key rows a reduce task is sized for (~100 bytes each): the bucket count is total keys / this, at least
the number of CPUs."""
FILES_PER_MAP = 16
"""Staged key files one map task reads."""


def duplicates_path(partition_id: str) -> str:
    """Where the duplicates of one partition are staged (absent when it has none)."""
    return f"{DUPLICATES}/{partition_id}.parquet"


def run_dedup(
    location: str, keyed: Sequence[tuple[int, str, str]], total_keys: int, cpus: float, task_cpus: float
) -> int:
    """Find the duplicates among the staged keys of `keyed` = [(partition order, partition id, staged keys
    path)] and stage them per partition; returns the number of duplicate samples. Ray must be running."""
    import ray

    out = shards.OutputDir(location)
    out.delete(DUPLICATES)
    buckets = max(int(cpus), math.ceil(total_keys / KEYS_PER_BUCKET), 1)
    groups = max(1, min(buckets, len(keyed)))
    # The map's last return is its number of image_near keys: whether the marker gets the near statistics.
    map_task = ray.remote(_split_keys).options(num_cpus=task_cpus, num_returns=buckets + 1)
    reduce_task = ray.remote(_reduce_bucket).options(num_cpus=task_cpus, num_returns=groups)
    write_task = ray.remote(_write_group).options(num_cpus=task_cpus)

    mapped = []
    for start in range(0, len(keyed), FILES_PER_MAP):
        paths = [path for _, _, path in keyed[start : start + FILES_PER_MAP]]
        mapped.append(map_task.remote(location, paths, buckets))
    reduced = []
    for bucket in range(buckets):
        refs = reduce_task.remote(groups, *(parts[bucket] for parts in mapped))
        reduced.append([refs] if groups == 1 else refs)
    ids = {order: partition_id for order, partition_id, _ in keyed}
    paths = {order: path for order, _, path in keyed}
    written = [
        write_task.remote(location, ids, paths, *(parts[group] for parts in reduced))
        for group in range(groups)
    ]
    results = ray.get(written)
    near_keys = sum(ray.get([parts[-1] for parts in mapped]))
    duplicates = sum(count for count, _, _ in results)
    done: dict[str, object] = {"duplicates": duplicates, "buckets": buckets}
    if near_keys:
        done["near_duplicates"] = sum(near for _, near, _ in results)
        done["near_distance_histogram"] = [
            sum(counts) for counts in zip(*(h for _, _, h in results), strict=True)
        ]
    out.write_json(DONE, done)
    return duplicates


Parts = tuple[pa.Table, pa.Table]
"""What travels between the stage's tasks: (exact keys or duplicates, band rows or nearest rows)."""


def _split_keys(location: str, paths: Sequence[str], buckets: int) -> list[Parts | int]:
    """Map: the key rows of some partitions as (exact keys, band rows) per bucket, then the number of
    image_near keys."""
    out = shards.OutputDir(location)
    keys = pa.concat_tables([out.read_table(path) for path in paths])
    near = pc.equal(keys["kind"], "image_near")
    exact = keys.filter(pc.invert(near))
    bands = dedup.band_rows(keys)
    split = zip(
        _split(exact, dedup.bucket_of(exact, buckets), buckets),
        _split(bands, dedup.band_bucket_of(bands, buckets), buckets),
        strict=True,
    )
    return [*split, pc.sum(near.cast(pa.int64())).as_py() or 0]


def _reduce_bucket(groups: int, *parts: Parts) -> list[Parts] | Parts:
    """Reduce: the exact duplicates and the nearest earlier images in one bucket, split by partition group
    (partition order % groups)."""
    found = dedup.find_duplicates(pa.concat_tables([exact for exact, _ in parts]))
    nearest = dedup.nearest_earlier(pa.concat_tables([bands for _, bands in parts]))
    if groups == 1:
        return found, nearest
    return list(
        zip(
            _split(found, pc.remainder(found["partition"], groups), groups),
            _split(nearest, pc.remainder(nearest["partition"], groups), groups),
            strict=True,
        )
    )


def _write_group(
    location: str, ids: dict[int, str], paths: dict[int, str], *parts: Parts
) -> tuple[int, int, list[int]]:
    """Write: one file of duplicates (one row per sample) for each partition of the group that has some.
    Returns (duplicate samples, those for image_near, the group's near-distance histogram)."""
    out = shards.OutputDir(location)
    nearest = pa.concat_tables([near for _, near in parts])
    near_partitions = sorted(set(nearest["partition"].to_pylist()))
    keys = (
        pa.concat_tables([out.read_table(paths[order]) for order in near_partitions])
        if near_partitions
        else dedup.KEY_SCHEMA.empty_table()
    )
    near, histogram = dedup.near_duplicates(nearest, keys)
    found = dedup.one_per_sample(pa.concat_tables([*(exact for exact, _ in parts), near]))
    partitions = found.column("partition").to_numpy()
    count = 0
    for order in sorted(set(partitions.tolist())):
        rows = found.filter(pc.equal(found.column("partition"), order))
        out.write_table(duplicates_path(ids[order]), rows, "none")
        count += rows.num_rows
    near_count = pc.sum(pc.equal(found["kind"], "image_near").cast(pa.int64())).as_py() or 0
    return count, near_count, histogram


def _split(table: pa.Table, bucket: pa.Array | pa.ChunkedArray, buckets: int) -> list[pa.Table]:
    """`table` split by `bucket` (values in [0, buckets)) into `buckets` tables, each made by one take (a
    sliced table would carry its parent's buffers to the next task)."""
    if buckets == 1:
        return [table]
    values = np.asarray(bucket.to_numpy())
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], np.arange(buckets + 1)).tolist()
    return [table.take(pa.array(order[start:end])) for start, end in itertools.pairwise(bounds)]


def staged_duplicates(out: shards.OutputDir, partition_id: str) -> pa.Table | None:
    """The staged duplicates of one partition, or None when it has none."""
    path = duplicates_path(partition_id)
    return out.read_table(path) if out.exists(path) else None
