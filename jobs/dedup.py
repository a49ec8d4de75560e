"""The pretokenize job's deduplication stage: a hash-partitioned shuffle of the staged dedup keys on Ray.

Each finished partition staged the keys of its surviving samples (`pipeline.dedup.sample_keys`, under
`_staging/keys/`). Finding duplicates needs every copy of a key in one place, but never all keys in one
place, so the keys move in two shuffles through Ray's object store, as plain Ray tasks:

1. *map* (one task per group of partitions): read the staged keys, split them by `bucket_of(hash)` into
   one table per bucket;
2. *reduce* (one task per bucket): `find_duplicates` over everything that hashes to the bucket, then split
   the duplicates by partition group;
3. *write* (one task per partition group): `one_per_sample` per partition, staged as
   `_staging/duplicates/<partition id>.parquet`, which the commit removes from the output and turns into
   reject rows.

A task holds one group of key files, one bucket, or one group's duplicates: the bucket count grows with the
number of keys (`KEYS_PER_BUCKET`). The result does not depend on the bucket count or the grouping: the kept
copy of a key is always its first by (partition order, row). The stage ends with the marker
`_staging/dedup.json`; a run interrupted inside it redoes the whole stage on resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    map_task = ray.remote(_split_keys).options(num_cpus=task_cpus, num_returns=buckets)
    reduce_task = ray.remote(_reduce_bucket).options(num_cpus=task_cpus, num_returns=groups)
    write_task = ray.remote(_write_group).options(num_cpus=task_cpus)

    mapped = []
    for start in range(0, len(keyed), FILES_PER_MAP):
        paths = [path for _, _, path in keyed[start : start + FILES_PER_MAP]]
        refs = map_task.remote(location, paths, buckets)
        mapped.append([refs] if buckets == 1 else refs)
    reduced = []
    for bucket in range(buckets):
        refs = reduce_task.remote(groups, *(parts[bucket] for parts in mapped))
        reduced.append([refs] if groups == 1 else refs)
    ids = {order: partition_id for order, partition_id, _ in keyed}
    written = [
        write_task.remote(location, ids, *(parts[group] for parts in reduced)) for group in range(groups)
    ]
    duplicates = sum(ray.get(written))
    out.write_json(DONE, {"duplicates": duplicates, "buckets": buckets})
    return duplicates


def _split_keys(location: str, paths: Sequence[str], buckets: int) -> list[pa.Table] | pa.Table:
    """Map: the key rows of some partitions, one table per bucket."""
    out = shards.OutputDir(location)
    keys = pa.concat_tables([out.read_table(path) for path in paths])
    if buckets == 1:
        return keys
    bucket = dedup.bucket_of(keys, buckets)
    return [keys.filter(pc.equal(bucket, b)) for b in range(buckets)]


def _reduce_bucket(groups: int, *parts: pa.Table) -> list[pa.Table] | pa.Table:
    """Reduce: the duplicates among one bucket's keys, split by partition group (partition order % groups)."""
    found = dedup.find_duplicates(pa.concat_tables(parts))
    if groups == 1:
        return found
    group = pc.remainder(found.column("partition"), groups)
    return [found.filter(pc.equal(group, g)) for g in range(groups)]


def _write_group(location: str, ids: dict[int, str], *parts: pa.Table) -> int:
    """Write: one file of duplicates (one row per sample) for each partition of the group that has some."""
    out = shards.OutputDir(location)
    found = dedup.one_per_sample(pa.concat_tables(parts))
    partitions = found.column("partition").to_numpy()
    count = 0
    for order in sorted(set(partitions.tolist())):
        rows = found.filter(pc.equal(found.column("partition"), order))
        out.write_table(duplicates_path(ids[order]), rows, "none")
        count += rows.num_rows
    return count


def staged_duplicates(out: shards.OutputDir, partition_id: str) -> pa.Table | None:
    """The staged duplicates of one partition, or None when it has none."""
    path = duplicates_path(partition_id)
    return out.read_table(path) if out.exists(path) else None
