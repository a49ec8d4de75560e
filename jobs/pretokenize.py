"""The pretokenize job: sources → samples → token sequences → Parquet shards and a manifest, on Ray.

The job is thin: the work of one input file (a *partition*) is `pipeline.partition.PartitionWorker`, a
plain function of the config; this module plans, runs partitions as Ray tasks, and commits.

1. plan (driver, before any work): validate the config, take the output folder's lease, settle what an
   earlier run left (below), list every source's files; partitions an interrupted run finished are
   skipped. A local `output.dir` on a Ray cluster of more than one node stops here (exit 2) unless
   `output.shared: true` says every node sees it: a worker's files must land where the driver commits.
2. dedup keys (only when a source dedups): each partition's worker reads, filters and builds its samples
   and stages only their dedup keys (`_staging/keys/<partition>.parquet`, a few dozen bytes per sample);
   a hash-partitioned shuffle of the keys on Ray finds every key's first copy (`jobs.dedup`) and stages
   each partition's duplicates. Reading the input twice is cheaper than staging its image bytes.
3. write (one Ray task of one CPU per partition; a worker process loads the tokenizer once and keeps it
   for the partitions, and the jobs, it runs next): the worker marks
   the partition started (`_staging/started/<partition>.json`), writes its final, compressed, checksummed
   files in place, one record batch at a time (`shards/<source>/part-<partition>-<k>.parquet`,
   `rejects/part-<partition>-<k>.parquet`, `filters/part-<partition>-<k>.parquet`; `shards/packed/` with
   packing, which packs within a partition), and returns a small record (counts, files, sizes, sha256),
   also staged as `_staging/done/<partition>.json`, the mark that the partition is finished.
4. commit (driver): the records in config and file order → `OUT/manifest.json`, written (the lease
   confirmed) atomically and last. No row and no image byte passes through the driver.

Determinism: a partition's files depend only on the config, its input file and its place in the plan, so
the same inputs and config give byte-identical outputs however the work is scheduled, on one machine or
many. A run killed at any point resumes: finished partitions are kept, a started one is redone (its files
removed first), and the staging folder is only resumed by the same config, code and list of input files.

The output folder is the job's own (`pipeline.shards`): one job at a time holds its lease, and the job
deletes only files it wrote, as its manifest or its staging records say. An earlier run's output
is settled before any work:
- a manifest of this config whose listed files are all there with their sizes: complete, nothing is
  written (sizes only: a full sha256 pass over every shard is what `vl2prep verify` is for);
- a manifest of this config with a listed file missing or of another size: the output is unfinished;
  the job says which file, removes the output (below) and runs again;
- a manifest of another config: exit 2, unless `--overwrite`, which removes the output: the staging
  folder with the files of the partitions it marked started, the statistics files vl2prep writes
  (`STATS_FILES`), every file the manifest lists, then the manifest itself (last, so that a removal that
  stops midway is finished by the next run), then those folders if they are left empty. Nothing else is
  touched.
A manifest that is not vl2prep's (not JSON, or listing paths vl2prep never writes), a `_staging/` folder
without the job's claim, or a file in `shards/`, `rejects/` or `filters/` that neither the manifest nor a
started partition accounts for stops the job (`OutputError`) before it deletes or writes anything.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import posixpath
import re
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import dedup as dedup_stage
from jobs.config import JobConfig
from jobs.progress import PartitionProgress, rate
from jobs.ray_runtime import ray_scope, reap_stale_sessions
from pipeline import filters, shards
from pipeline.partition import Partition, PartitionWorker
from schemas import manifest as manifest_schema
from schemas import reject as reject_schema
from schemas import sample as sample_schema
from schemas import shard as shard_schema
from schemas.manifest import Manifest, PartitionRecord, SourceTotals

__all__ = [
    "MANIFEST_VERSION",
    "STATS_FILES",
    "OutputError",
    "Partition",
    "code_identity",
    "make_worker",
    "run",
]

MANIFEST_VERSION = manifest_schema.MANIFEST_VERSION
STAGING = shards.STAGING
CLAIM = f"{STAGING}/job.json"
"""The staging folder's claim: the config, code and input files that made it. Without it, `_staging/` is
not the job's."""
STARTED = f"{STAGING}/started"
DONE = f"{STAGING}/done"
KEYS = f"{STAGING}/keys"
STATS_FILES = ("stats/stats.json", "stats/report.html", "stats/report.md", "stats/validation.json")
"""The files `jobs.stats` and `jobs.validate` write into an output folder (never listed in a manifest)."""
OUTPUT_FILE = manifest_schema.OUTPUT_FILE
PART_FILE = re.compile(r"part-([0-9]{5,})-[0-9]{3,}\.parquet")
"""A file a worker writes; the group is its partition's order."""
IN_FLIGHT_PER_CPU = 2
"""Partition tasks submitted per CPU of the cluster at a time: enough to keep every CPU busy while results
come back, few enough that the driver holds a small window of references."""
READ_THREADS = 16
"""Threads reading the staged records of partitions an earlier run finished (small files, latency-bound)."""


class OutputError(Exception):
    """The output folder holds something the job did not write and will not touch (a foreign manifest, a
    foreign `_staging/`, unlisted files where shards go), or is a local folder other nodes of a cluster
    cannot see; the message names it and says what to do."""


def run(
    config: JobConfig,
    overwrite: bool = False,
    out_stream: Any = None,
    allow_empty: bool = False,
    verbose: bool = False,
) -> int:
    """Run the job; returns the process exit code. Prints progress and a summary to `out_stream`.

    A job that wrote no row returns 1 (after committing what it did: the rejects say why), unless
    `allow_empty`. `verbose` passes Ray's own log lines through to the terminal.

    Raises `shards.LeaseHeld` when another job holds the output folder, `OutputError` when the folder
    holds files the job did not write where it would write, and `OSError` for storage failures."""
    out_stream = out_stream or sys.stdout
    out = shards.OutputDir(config.output_dir)
    with ray_scope(), shards.OutputLease(out) as lease:  # Ray, if this run starts it, ends with it
        if lease.took_over:
            print(f"{config.output_dir}: {lease.took_over}.", file=out_stream)
            reap_stale_sessions()  # no straggling worker of a killed run writes beside this one
        job = _Job(config, out, lease, out_stream, verbose)
        status = job.run(overwrite)
    if status == 0 and job.rows == 0 and not allow_empty:
        print(
            f"pretokenize: the job wrote no row ({job.read} records read, {job.rejected} rejected; "
            f"see {config.output_dir}/rejects/ or stats/report.html). Rerun with --allow-empty if an "
            "empty output is expected.",
            file=sys.stderr,
        )
        return 1
    return status


class _Job:
    """One run of the job on a leased output folder (the module docstring's steps)."""

    def __init__(
        self,
        config: JobConfig,
        out: shards.OutputDir,
        lease: shards.OutputLease,
        out_stream: Any,
        verbose: bool,
    ) -> None:
        self.config = config
        self.out = out
        self.lease = lease
        self.out_stream = out_stream
        self.verbose = verbose
        self.rows = self.read = self.rejected = 0
        self._eval_ref: Any = None

    def run(self, overwrite: bool) -> int:
        config, out, out_stream = self.config, self.out, self.out_stream
        identity = config.identity()
        previous = _previous_manifest(out)
        if previous is not None:
            listed = _listed_files(previous)
            if not overwrite:
                if previous.get("config_sha256") != identity:
                    print(
                        f"{config.output_dir} already holds the output of another config; "
                        "rerun with --overwrite to replace it.",
                        file=sys.stderr,
                    )
                    return 2
                problem = _listed_file_problem(out, previous)
                if problem is None:
                    # A staging folder is left over only if a run stopped right after committing.
                    _remove_staging(out, keep=listed)
                    print(f"{config.output_dir}: complete (manifest.json present).", file=out_stream)
                    self._count(previous)
                    return _write_stats(config, out, out_stream)
                print(
                    f"{config.output_dir}: {problem}: the output is incomplete; removing the files its "
                    "manifest lists and running again.",
                    file=out_stream,
                )
            self.lease.check()
            removed = _remove_output(out, previous)
            print(f"{config.output_dir}: removed the previous output ({removed} files).", file=out_stream)
        elif overwrite:
            _remove_staging(out)  # an unfinished run's staged work, and the files of its partitions
        _refuse_unlisted_files(out)

        started = time.perf_counter()
        timings: dict[str, float] = {}
        partitions = [
            Partition(source.index, source.name, file, order)
            for order, (source, file) in enumerate(
                (source, file) for source in config.sources for file in source.reader.files()
            )
        ]
        _claim_staging(out, identity, partitions)
        done = _staged_orders(out, DONE)
        _remove_unfinished(out, done)
        pending = [p for p in partitions if p.order not in done]
        print(
            f"pretokenize: {len(config.sources)} sources, {len(partitions)} input files "
            f"({len(partitions) - len(pending)} already done) → {config.output_dir}",
            file=out_stream,
        )
        records: dict[int, PartitionRecord] = {}
        if pending:
            self._start_ray()
            eval_index = self._eval_index()
            timings["plan"] = time.perf_counter() - started
            self._deduplicate(partitions, done)
            timings["dedup"] = time.perf_counter() - started - sum(timings.values())
            progress = PartitionProgress(len(pending), out_stream)
            for record in _run_partitions(config, "write", pending, eval_index):
                records[record.order] = record
                progress.update(record)
            progress.finish()
            timings["write"] = time.perf_counter() - started - sum(timings.values())
        records.update(_read_records(out, [p for p in partitions if p.order not in records]))
        manifest = _manifest(config, identity, [records[p.order] for p in partitions])
        self.lease.check()  # the manifest is the commit: only while the folder is still this job's
        out.write_json(shards.MANIFEST, manifest.to_dict())
        _remove_staging(out, keep={entry.path for entry in manifest.files()}, placed_known=True)
        timings["commit"] = time.perf_counter() - started - sum(timings.values())
        seconds = {name: 0.0 for name in manifest.sources}
        for record in records.values():
            seconds[record.source] += record.seconds
        _print_summary(manifest, seconds, time.perf_counter() - started, out_stream)
        nodes: dict[str, int] = {}
        for record in records.values():
            if record.node:
                nodes[record.node] = nodes.get(record.node, 0) + 1
        if len(nodes) > 1:
            spread = ", ".join(f"{node[:8]} {count}" for node, count in sorted(nodes.items()))
            print(f"input files written per Ray node: {spread}", file=out_stream)
        stages = ", ".join(f"{name} {spent:.2f} s" for name, spent in timings.items())
        peak = max((record.peak_rss_mib for record in records.values()), default=0.0)
        memory = f"; worker peak memory {peak:.0f} MiB" if peak else ""
        print(f"time: {stages}{memory}", file=out_stream)
        self._count(manifest.to_dict())
        return _write_stats(config, out, out_stream, fresh=True)

    def _count(self, manifest: dict[str, Any]) -> None:
        sources = manifest.get("sources") or {}
        self.rows = sum(total.get("rows", 0) for total in sources.values())
        self.read = sum(total.get("read", 0) for total in sources.values())
        self.rejected = sum(total.get("rejected_total", 0) for total in sources.values())

    def _start_ray(self) -> None:
        import ray

        from jobs.ray_runtime import start_ray

        start_ray(self.config.ray_address, self.config.ray_num_cpus, log_to_driver=self.verbose)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) > 1 and self.out.is_local and not self.config.output_shared:
            raise OutputError(
                f"output.dir {self.config.output_dir} is a local folder and the Ray cluster has {len(nodes)} "
                "nodes: workers on other nodes would write where this driver cannot see. Use an object "
                "store (s3://..., gs://...), or a mount that every node shares with output.shared: true"
            )

    def _eval_index(self) -> Any:
        """The evaluation sets' index (`pipeline.decontam.EvalIndex`), built once in a Ray task and left in
        the object store for the workers (never on the driver); None without `decontaminate`."""
        if self.config.decontaminate is None:
            return None
        if self._eval_ref is None:
            import ray

            from pipeline.decontam import build_eval_index

            self._eval_ref = ray.remote(build_eval_index).remote(self.config.decontaminate)
        return self._eval_ref

    def _deduplicate(self, partitions: list[Partition], done: set[int]) -> None:
        """Step 2: the dedup keys of every deduplicating partition, then their duplicates (`jobs.dedup`),
        unless no source dedups or this staging folder finished the stage already."""
        config, out = self.config, self.out
        keyed = [p for p in partitions if config.sources[p.source_index].dedup is not None]
        if not keyed or out.exists(dedup_stage.DONE):
            return
        have = _staged_orders(out, KEYS, suffix=".parquet")
        counts = {}
        missing = [p for p in keyed if p.order not in have]
        for order, count in _run_partitions(config, "keys", missing, self._eval_index()):
            counts[order] = count
        for p in keyed:
            if p.order not in counts:
                counts[p.order] = pq.read_metadata(out.path(_keys_path(p)), filesystem=out.fs).num_rows
        import ray

        from jobs.ray_runtime import task_cpus

        print(f"dedup: {sum(counts.values())} keys of {len(keyed)} input files", file=self.out_stream)
        dedup_stage.run_dedup(
            config.output_dir,
            [(p.order, p.prefix, _keys_path(p)) for p in keyed],
            sum(counts.values()),
            cpus=ray.cluster_resources().get("CPU", 1),
            task_cpus=task_cpus(),
        )


# ------------------------------------------------------------------------------------------------
# ownership: what an earlier run left, and removing only that


def _previous_manifest(out: shards.OutputDir) -> dict[str, Any] | None:
    """The manifest in the folder, None when there is none; `OutputError` when it is not a vl2prep
    manifest whose listed paths are all files this job writes (the job cannot tell what it may remove)."""
    if not out.exists(shards.MANIFEST):
        return None
    where = out.path(shards.MANIFEST)
    advice = "vl2prep touches nothing in this folder; move it away or choose another output.dir"
    try:
        manifest = out.read_json(shards.MANIFEST)
    except ValueError as error:
        raise OutputError(f"{where} is not JSON ({error}); {advice}") from None
    try:
        manifest_schema.check_manifest(manifest)
    except ValueError as error:
        raise OutputError(f"{where}: {error}; {advice}") from None
    return manifest


def _listed_files(manifest: dict[str, Any]) -> set[str]:
    return {entry.path for entry in manifest_schema.check_manifest(manifest)}


def _listed_file_problem(out: shards.OutputDir, manifest: dict[str, Any]) -> str | None:
    """The first listed file that is missing or whose size differs from the manifest's, said in words."""
    entries = manifest_schema.check_manifest(manifest)
    infos = out.fs.get_file_info([out.path(entry.path) for entry in entries]) if entries else []
    for entry, info in zip(entries, infos, strict=True):
        if info.type != pafs.FileType.File:
            return f"{entry.path}, listed in manifest.json, is missing"
        if info.size != entry.bytes:
            return f"{entry.path} has {info.size} bytes where manifest.json lists {entry.bytes}"
    return None


def _remove_output(out: shards.OutputDir, manifest: dict[str, Any]) -> int:
    """Remove what the run that wrote `manifest` wrote (see the module docstring); the number of files."""
    listed = _listed_files(manifest)
    _remove_staging(out)
    removed = sum(out.delete_file(path) for path in (*STATS_FILES, *sorted(listed)))
    removed += out.delete_file(shards.MANIFEST)
    folders = {posixpath.dirname(path) for path in listed} | {"shards", "rejects", "filters", "stats"}
    out.remove_empty_folders(folders)
    return removed


def _remove_staging(
    out: shards.OutputDir, keep: set[str] | frozenset[str] = frozenset(), placed_known: bool = False
) -> None:
    """Remove the staging folder and the files of the partitions it marked started (but those in `keep`,
    listed by the manifest in force; with `placed_known`, `keep` is all of them), the claim last: a removal
    that stops midway leaves a staging folder that is still recognisably the job's. `OutputError` when
    `_staging/` exists without the claim."""
    if not out.exists(STAGING):
        return
    placed = [] if placed_known else sorted(_placed_files(out) - set(keep))
    for path in placed:
        out.delete_file(path)
    out.remove_empty_folders({posixpath.dirname(path) for path in placed} | {"shards"} if placed else ())
    selector = pafs.FileSelector(out.path(STAGING), recursive=False)
    for info in out.fs.get_file_info(selector):
        relative = posixpath.relpath(info.path, out.root)
        if relative != CLAIM:
            out.delete(relative)
    out.delete_file(CLAIM)
    out.delete(STAGING)


def _check_claimed(out: shards.OutputDir) -> None:
    if out.exists(STAGING) and not out.exists(CLAIM):
        raise OutputError(
            f"{out.path(STAGING)} was not made by vl2prep (it holds no {posixpath.basename(CLAIM)}); "
            "move it away or choose another output.dir"
        )


def _placed_files(out: shards.OutputDir, started: set[int] | None = None) -> set[str]:
    """The files in `shards/`, `rejects/` and `filters/` that partitions this staging folder marked
    started wrote (by their names, `part-<partition>-<k>.parquet`); none without a staging folder.
    `OutputError` when `_staging/` is not the job's (no claim)."""
    if not out.exists(STAGING):
        return set()
    _check_claimed(out)
    started = _staged_orders(out, STARTED) if started is None else started
    if not started:
        return set()
    placed = set()
    for path in _output_files(out):
        match = PART_FILE.fullmatch(posixpath.basename(path))
        if match and int(match.group(1)) in started and OUTPUT_FILE.fullmatch(path):
            placed.add(path)
    return placed


def _output_files(out: shards.OutputDir) -> list[str]:
    return [path for folder in ("shards", "rejects", "filters") for path in out.list_files(folder)]


def _refuse_unlisted_files(out: shards.OutputDir) -> None:
    """`OutputError` for a file where the job writes (shards/, rejects/, filters/) that no started
    partition of the staging folder accounts for: writing or removing there could destroy it."""
    placed = _placed_files(out)
    for path in _output_files(out):
        if path not in placed:
            raise OutputError(
                f"{out.path(path)} was not written by this job (no manifest or staging record lists "
                "it); move it away or choose another output.dir"
            )


def _remove_unfinished(out: shards.OutputDir, done: set[int]) -> None:
    """Remove the files of partitions marked started but not done (a run stopped while writing them):
    they are written again from the start."""
    unfinished = _staged_orders(out, STARTED) - done
    if not unfinished:
        return
    for path in sorted(_placed_files(out, started=unfinished)):
        out.delete_file(path)
    for order in unfinished:
        out.delete_file(f"{STARTED}/{order:05d}.json")


def _staged_orders(out: shards.OutputDir, folder: str, suffix: str = ".json") -> set[int]:
    """The partitions (orders) that have a staged `<order>.json` (or `suffix`) record in `folder`: one
    listing, not one lookup per partition."""
    orders = set()
    for path in out.list_files(folder):
        name = posixpath.basename(path)
        if name.endswith(suffix) and name[: -len(suffix)].isdigit():
            orders.add(int(name[: -len(suffix)]))
    return orders


def _write_stats(config: JobConfig, out: shards.OutputDir, out_stream: Any, fresh: bool = False) -> int:
    """The statistics report of a committed output, unless switched off or, for an output committed
    earlier, already there (a run stopped between the manifest and the report gets it on its rerun; the
    report of a complete output is never rewritten). A `fresh` commit always gets its own report."""
    from jobs import stats  # imports matplotlib: only once the shards are committed

    if not config.write_stats or (not fresh and out.exists(stats.STATS_FILE)):
        return 0
    return stats.run(
        config.output_dir,
        tokenizer_path=config.tokenizer_path,
        ray_address=config.ray_address,
        num_cpus=config.ray_num_cpus,
        out_stream=out_stream,
    )


# ------------------------------------------------------------------------------------------------
# the Ray part: one task per partition, small records back


_TOKENIZERS: dict[tuple[str, str, str | None, str], Any] = {}
"""The tokenizer this Ray worker process loaded last, by (sha256, path, kind, shape fingerprint): loaded once
per process, which Ray reuses for task after task, job after job."""


def _partition_task(config: JobConfig, what: str, partition: Partition, eval_index: Any) -> Any:
    """Ray task body: the dedup keys of one partition (`what="keys"`: staged, their count returned) or its
    final files (`what="write"`: the partition's record returned, and staged as its `done` mark)."""
    key = (config.tokenizer_sha256, config.tokenizer_path, config.tokenizer_kind, config.shape.fingerprint())
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()  # one at a time: a process serves one job's config at a time
        _TOKENIZERS[key] = config.load_tokenizer()
    worker = make_worker(config, eval_index, tokenizer=_TOKENIZERS[key])
    out = shards.OutputDir(config.output_dir)
    if what == "keys":
        keys = worker.keys(partition)
        out.write_table(_keys_path(partition), keys, "none")
        return partition.order, keys.num_rows
    out.write_json(f"{STARTED}/{partition.prefix}.json", {"source": partition.source, "file": partition.file})
    duplicates = None
    if config.sources[partition.source_index].dedup is not None:
        duplicates = dedup_stage.staged_duplicates(out, partition.prefix)
    record = worker.write(partition, duplicates)
    import ray

    record.node = ray.get_runtime_context().get_node_id()
    record.peak_rss_mib = peak_rss_mib()
    out.write_json(f"{DONE}/{partition.prefix}.json", record.to_dict())
    return record


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: `VmHWM` where /proc has it (reset by exec, unlike
    `ru_maxrss`, which a process started by a big parent inherits), else `ru_maxrss`."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_worker(config: JobConfig, eval_index: Any = None, tokenizer: Any = None) -> PartitionWorker:
    """The `PartitionWorker` of a config, with its tokenizer (loaded unless given)."""
    special = config.shape.special_tokens
    assert special is not None  # the tokenizer check guarantees special ids
    return PartitionWorker(
        config.sources,
        config.shape,
        tokenizer if tokenizer is not None else config.load_tokenizer(),
        config.output,
        config.packing,
        config.max_seq_len,
        special.pad,
        eval_index,
    )


def _run_partitions(config: JobConfig, what: str, partitions: list[Partition], eval_index: Any) -> Any:
    """Run `_partition_task` over `partitions` as Ray tasks of one CPU each, at most `IN_FLIGHT_PER_CPU`
    per CPU of the cluster at a time (each `ray.wait` looks at that window only, so gathering stays
    linear in the number of partitions); yields the results as they come. Tasks are retried by Ray when a
    worker dies: a partition's files are written again under the same names."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    task = ray.remote(_partition_task).options(num_cpus=min(1.0, cpus), max_retries=3)
    config_ref = ray.put(config)
    waiting = iter(partitions)
    in_flight = [
        task.remote(config_ref, what, partition, eval_index)
        for partition in itertools.islice(waiting, max(1, int(cpus * IN_FLIGHT_PER_CPU)))
    ]
    while in_flight:
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        in_flight += [
            task.remote(config_ref, what, partition, eval_index) for partition in itertools.islice(waiting, 1)
        ]
        yield ray.get(ready[0])


def _read_records(out: shards.OutputDir, partitions: list[Partition]) -> dict[int, PartitionRecord]:
    """The staged records of partitions an earlier run finished (read in parallel: each is small)."""

    def read(partition: Partition) -> PartitionRecord:
        return PartitionRecord.from_dict(out.read_json(f"{DONE}/{partition.prefix}.json"))

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return {record.order: record for record in pool.map(read, partitions)}


def _keys_path(partition: Partition) -> str:
    return f"{KEYS}/{partition.prefix}.parquet"


# ------------------------------------------------------------------------------------------------
# commit


def _manifest(config: JobConfig, identity: str, records: list[PartitionRecord]) -> Manifest:
    """The manifest of the partitions' records, in config and file order."""
    totals = {source.name: SourceTotals() for source in config.sources}
    packing_sources: dict[str, Any] = {}
    decontamination: dict[str, int] = {}
    for record in records:
        totals[record.source].add(record.totals)
        if record.packing is not None:
            packing_sources.setdefault(record.source, []).append(record.packing)
        for name, count in record.decontamination.items():
            decontamination[name] = decontamination.get(name, 0) + count
    for name, total in totals.items():
        total.check(name)
    return Manifest(
        schema_versions={
            "sample": sample_schema.SCHEMA_VERSION,
            "reject": reject_schema.SCHEMA_VERSION,
            "shard": shard_schema.SCHEMA_VERSION,
        },
        code=code_identity(),
        config=config.raw,
        config_sha256=identity,
        model_shape={"name": config.shape.name, "fingerprint": config.shape.fingerprint()},
        tokenizer=dict(config.tokenizer_summary),
        max_seq_len=config.max_seq_len,
        packing=_packing_summary(config, packing_sources) if config.packing else None,
        shards=[entry for record in records for entry in record.shards],
        rejects=[entry for record in records for entry in record.rejects],
        filters={
            "thresholds": {
                source.name: source.filters.thresholds for source in config.sources if source.filters
            },
            "measurements": [entry for record in records for entry in record.measurements],
        },
        dedup=_dedup_summary(shards.OutputDir(config.output_dir)),
        sources=totals,
        decontamination=decontamination or None,
    )


def _packing_summary(config: JobConfig, per_source: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Packed rows, documents, tokens and tiles per source and in all, with the share of the rows' token
    (and, with max_tiles, tile) budget that documents fill."""
    options = config.packing
    assert options is not None

    def summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
        rows = sum(part["rows"] for part in parts)
        tokens = sum(part["tokens"] for part in parts)
        result = {
            "rows": rows,
            "documents": sum(part["documents"] for part in parts),
            "tokens": tokens,
            "token_fill": tokens / (rows * config.max_seq_len) if rows else 0.0,
        }
        if options.max_tiles is not None:
            tiles = sum(part["tiles"] for part in parts)
            result.update(tiles=tiles, tile_fill=tiles / (rows * options.max_tiles) if rows else 0.0)
        return result

    everything = [part for parts in per_source.values() for part in parts]
    return {
        **summary(everything),
        "max_tiles": options.max_tiles,
        "buffer": options.buffer,
        "sources": {name: summary(parts) for name, parts in per_source.items()},
    }


def _dedup_summary(out: shards.OutputDir) -> dict[str, Any] | None:
    """The dedup stage's result (duplicates; with image_near, near duplicates and the distance histogram)."""
    if not out.exists(dedup_stage.DONE):
        return None
    return {key: value for key, value in out.read_json(dedup_stage.DONE).items() if key != "buckets"}


@functools.cache
def code_identity() -> dict[str, str]:
    """The package version and a sha256 over the source of the four packages (relative paths and bytes)."""
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in ("jobs", "model_shapes", "pipeline", "schemas"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        release = version("vl2prep")
    except PackageNotFoundError:
        release = "unknown"
    return {"version": release, "source_sha256": digest.hexdigest()}


def _claim_staging(out: shards.OutputDir, identity: str, partitions: list[Partition]) -> None:
    """Keep staged work only if this config, this code and this list of input files made it (a partition's
    files are named by its place in the list); otherwise start over."""
    listing = hashlib.sha256()
    for partition in partitions:
        listing.update(f"{partition.source}\0{partition.file}\0".encode())
    claim = {"config_sha256": identity, "code": code_identity(), "inputs_sha256": listing.hexdigest()}
    try:
        if out.exists(CLAIM) and out.read_json(CLAIM) == claim:
            return
    except ValueError:
        pass  # a claim that is not JSON matches nothing: that staging is started over like any other
    _remove_staging(out)
    out.write_json(CLAIM, claim)


def _print_summary(
    manifest: Manifest, worker_seconds: dict[str, float], seconds: float, out_stream: Any
) -> None:
    header = (
        "source",
        "read",
        "written",
        "rejected",
        "rows",
        "tokens",
        "image tok",
        "loss tok",
        "shards",
        "rec/s",
    )
    counted: dict[str, int] = {}
    for entry in manifest.shards:
        counted[entry.source or ""] = counted.get(entry.source or "", 0) + 1
    lines = [header]
    for name, total in manifest.sources.items():
        lines.append(
            (
                name,
                str(total.read),
                str(total.written),
                str(total.rejected_total),
                str(total.rows),
                str(total.tokens),
                str(total.image_tokens),
                str(total.loss_tokens),
                str(counted.get(name, 0)),
                f"{total.read / worker_seconds[name]:.0f}" if worker_seconds.get(name) else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print("", file=out_stream)
    for line in lines:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells), file=out_stream)
    read = sum(total.read for total in manifest.sources.values())
    rejected: dict[str, int] = {}
    for total in manifest.sources.values():
        for reason, count in total.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items())) or "none"
    print(f"\nrejects by reason: {reasons}", file=out_stream)
    filter_reasons = {spec.reason for spec in filters.FILTERS.values()}
    if manifest.filters["thresholds"]:
        dropped = sum(count for reason, count in rejected.items() if reason in filter_reasons)
        measured = sum(entry.rows for entry in manifest.filters["measurements"])
        print(f"filters: {dropped} of {measured} measured samples dropped (OUT/filters/)", file=out_stream)
    if manifest.dedup is not None:
        near = manifest.dedup.get("near_duplicates")
        also = f" ({near} of them near-duplicate images)" if near is not None else ""
        print(f"dedup: {manifest.dedup['duplicates']} duplicates dropped{also}", file=out_stream)
    if manifest.decontamination:
        found = ", ".join(f"{name} {count}" for name, count in sorted(manifest.decontamination.items()))
        print(f"decontamination: samples overlapping evaluation sets: {found}", file=out_stream)
    if manifest.packing:
        packing = manifest.packing
        tiles = f", tile fill {packing['tile_fill']:.1%}" if "tile_fill" in packing else ""
        print(
            f"packing: {packing['rows']} rows of {packing['documents']} documents, token fill "
            f"{packing['token_fill']:.1%}{tiles}",
            file=out_stream,
        )
    print(
        f"{read} records in {seconds:.1f} s ({rate(read / max(seconds, 1e-9))}; a source's rec/s is per "
        f"worker-second spent on its files); {len(manifest.shards)} shards, manifest.json written.",
        file=out_stream,
    )
