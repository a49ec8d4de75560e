"""The pretokenize job: sources → samples → token sequences → Parquet shards and a manifest, on Ray.

The walk, one input file (a *partition*) at a time:

1. plan (driver, before Ray starts): validate the config, take the output folder's lease, settle what an
   earlier run left (below), list every source's files; partitions already finished by an earlier,
   interrupted run are skipped.
2. read (Ray tasks, one per partition): the source's reader turns the file into `schemas.sample` and
   `schemas.reject` rows, staged under `OUT/_staging/` (image bytes go to disk once, never through the
   object store).
3. sequence (a Ray actor pool, the tokenizer loaded once per actor): the source's filters
   (`pipeline.filters`) measure the staged samples and drop those out of bounds, the rest become
   `schemas.shard` rows and sequence-stage rejects, and the dedup keys of the built samples are staged
   (`pipeline.dedup`); a `done` marker, written last, finishes the partition.
3b. dedup (Ray tasks, only when a source dedups): a hash-partitioned shuffle of all staged keys finds every
   key's first copy by (partition order, row); the later copies are staged per partition (`jobs.dedup`).
4. commit (driver, streaming, one partition at a time): rows in config order → size-targeted shards
   `OUT/shards/<source>/part-NNNNN.parquet` (or `OUT/shards/packed/` with packing), rejects →
   `OUT/rejects/part-NNNNN.parquet`, duplicates removed and rejected, filter measurements →
   `OUT/filters/part-NNNNN.parquet`, then (the lease confirmed) `OUT/manifest.json`, atomically, last.
   Staging is removed.

Determinism: partitions are committed in config and file order, rows in record order, and shard files
depend only on the rows, so the same inputs and config give byte-identical outputs wherever they live.
A run killed at any point resumes from the partition markers; a finished output is left alone unless
`--overwrite`.

The output folder is the job's own (`pipeline.shards`): one job at a time holds its lease, and the job
deletes only files it wrote, as its manifest or its staging records list them. An earlier run's output
is settled before any work:
- a manifest of this config whose listed files are all there with their sizes: complete, nothing is
  written (sizes only: a full sha256 pass over every shard is what `vl2prep verify` is for);
- a manifest of this config with a listed file missing or of another size: the output is unfinished;
  the job says which file, removes the output (below) and runs again;
- a manifest of another config: exit 2, unless `--overwrite`, which removes the output: the staging
  folder with the finished files its records place, the statistics files vl2prep writes (`STATS_FILES`),
  every file the manifest lists, then the manifest itself (last, so that a removal that stops midway is
  finished by the next run), then those folders if they are left empty. Nothing else is touched.
A manifest that is not vl2prep's (not JSON, or listing paths vl2prep never writes), a `_staging/` folder
without the job's claim, or a file in `shards/`, `rejects/` or `filters/` that no manifest or staging
record lists stops the job (`OutputError`) before it deletes or writes anything.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from jobs import dedup as dedup_stage
from jobs.config import JobConfig
from jobs.ray_runtime import ray_scope, reap_stale_sessions
from pipeline import dedup, filters, shards
from pipeline.ingest import Counts
from pipeline.packing import Packer
from pipeline.sequence import SequenceBuilder
from schemas import reject as reject_schema
from schemas import sample as sample_schema
from schemas import shard as shard_schema

__all__ = ["MANIFEST_VERSION", "STATS_FILES", "OutputError", "Partition", "run"]

MANIFEST_VERSION = 3
"""3: `config_sha256` covers the tokenizer and model shape the config resolved to (2: the config alone)."""
STAGING = shards.STAGING
CLAIM = f"{STAGING}/job.json"
"""The staging folder's claim: the config and code that made it. Without it, `_staging/` is not the job's."""
STATS_FILES = ("stats/stats.json", "stats/report.html", "stats/report.md", "stats/validation.json")
"""The files `jobs.stats` and `jobs.validate` write into an output folder (never listed in a manifest)."""
OUTPUT_FILE = re.compile(r"(shards/[A-Za-z0-9][A-Za-z0-9._-]*|rejects|filters)/part-[0-9]{5}\.parquet")
"""The only paths a manifest or a staging record of this job may list: shards, rejects, measurements."""
STAGING_COMPRESSION = "none"
"""Staged files live minutes and mostly hold image bytes that do not compress: only shards are compressed."""
READ_TASK_MEMORY = 512 * 2**20
"""Memory a read task reserves (Ray's logical `memory` resource): one input file's samples and images."""


@dataclass(frozen=True)
class Partition:
    """One input file of one source: the unit of parallel work and of resume."""

    source_index: int
    source: str
    file: str
    order: int = 0  # position among all partitions (config, then file order): what "first copy" means

    @property
    def id(self) -> str:
        """A stable name for the partition's staged files."""
        return hashlib.sha256(f"{self.source}\0{self.file}".encode()).hexdigest()[:20]

    def staged(self, what: str) -> str:
        """Relative path of one of the partition's staged files (samples, read-rejects, rows, ...)."""
        suffix = "json" if what == "done" else "parquet"
        return f"{STAGING}/{what}/{self.id}.{suffix}"


@dataclass
class SourceTotals:
    """What one source gave: records read, samples written, rows, rejects by reason, tokens."""

    read: int = 0
    written: int = 0
    rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    image_tokens: int = 0
    loss_tokens: int = 0
    seconds: float = 0.0  # worker time spent on the source's files (not in the manifest: it varies)

    def add(self, done: dict[str, Any]) -> None:
        self.seconds += done["seconds"]
        self.read += done["read"]
        self.written += done["written"]
        self.rows += done["rows"]
        self.tokens += done["tokens"]
        self.image_tokens += done["image_tokens"]
        self.loss_tokens += done["loss_tokens"]
        for reason, count in done["rejected"].items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def remove_duplicates(self, rows: pa.Table, rejects: pa.Table) -> None:
        """Take duplicate samples (their `rows`, their reject rows) out of the written counts."""
        self.written -= rejects.num_rows
        self.rows -= rows.num_rows
        self.tokens -= _column_sum(rows, "seq_len")
        self.image_tokens -= _column_sum(rows, "num_image_tokens")
        self.loss_tokens -= _column_sum(rows, "num_loss_tokens")
        for reason in rejects.column("reason").to_pylist():
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class OutputError(Exception):
    """The output folder holds something the job did not write and will not touch (a foreign manifest, a
    foreign `_staging/`, unlisted files where shards go); the message names it and says what to do."""


def run(config: JobConfig, overwrite: bool = False, out_stream: Any = None) -> int:
    """Run the job; returns the process exit code. Prints progress and a summary to `out_stream`.

    Raises `shards.LeaseHeld` when another job holds the output folder, `OutputError` when the folder
    holds files the job did not write where it would write, and `OSError` for storage failures."""
    out_stream = out_stream or sys.stdout
    out = shards.OutputDir(config.output_dir)
    with ray_scope(), shards.OutputLease(out) as lease:  # Ray, if this run starts it, ends with it
        if lease.took_over:
            print(f"{config.output_dir}: {lease.took_over}.", file=out_stream)
            reap_stale_sessions()  # no straggling worker of a killed run writes beside this one
        return _run_leased(config, out, lease, overwrite, out_stream)


def _run_leased(
    config: JobConfig, out: shards.OutputDir, lease: shards.OutputLease, overwrite: bool, out_stream: Any
) -> int:
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
                _remove_staging(out, keep=listed)  # left over only if a run stopped right after committing
                print(f"{config.output_dir}: complete (manifest.json present).", file=out_stream)
                return _write_stats(config, out, out_stream)
            print(
                f"{config.output_dir}: {problem}: the output is incomplete; removing the files its "
                "manifest lists and running again.",
                file=out_stream,
            )
        lease.check()
        removed = _remove_output(out, previous)
        print(f"{config.output_dir}: removed the previous output ({removed} files).", file=out_stream)
    elif overwrite:
        _remove_staging(out)  # an unfinished run's staged work, and the finished files it placed
    _refuse_unlisted_files(out)
    _claim_staging(out, identity)

    started = time.perf_counter()
    files = [
        (index, reader.config.name, file)
        for index, reader in enumerate(config.readers)
        for file in reader.files()
    ]
    partitions = [Partition(index, name, file, order) for order, (index, name, file) in enumerate(files)]
    pending = [p for p in partitions if not out.exists(p.staged("done"))]
    print(
        f"pretokenize: {len(config.readers)} sources, {len(partitions)} input files "
        f"({len(partitions) - len(pending)} already done) → {config.output_dir}",
        file=out_stream,
    )
    if pending:
        _process(config, pending)
    _deduplicate(config, out, partitions)
    manifest, worker_seconds = _commit(config, out, partitions, identity)
    lease.check()  # the manifest is the commit: only while the folder is still this job's
    out.write_json(shards.MANIFEST, manifest)
    _remove_staging(out, keep=_listed_files(manifest))
    _print_summary(manifest, worker_seconds, time.perf_counter() - started, out_stream)
    return _write_stats(config, out, out_stream, fresh=True)


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
    if not isinstance(manifest, dict) or "vl2prep_manifest" not in manifest:
        raise OutputError(f"{where} is not a vl2prep manifest (no vl2prep_manifest key); {advice}")
    try:
        _listed_files(manifest)
    except ValueError as error:
        raise OutputError(f"{where}: {error}; {advice}") from None
    return manifest


def _manifest_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries (shards, rejects, filter measurements); ValueError when malformed."""
    filters_section = manifest.get("filters") or {}
    groups = [manifest.get("shards"), manifest.get("rejects"), filters_section.get("measurements", [])]
    entries = []
    for group in groups:
        if not isinstance(group, list):
            raise ValueError("its shards, rejects and filters.measurements must be lists")
        for entry in group:
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not OUTPUT_FILE.fullmatch(path):
                raise ValueError(f"it lists {str(path)[:200]!r}, not a file vl2prep writes")
            if not isinstance(entry.get("bytes"), int):
                raise ValueError(f"its entry of {path} has no size in bytes")
            entries.append(entry)
    return entries


def _listed_files(manifest: dict[str, Any]) -> set[str]:
    return {entry["path"] for entry in _manifest_entries(manifest)}


def _listed_file_problem(out: shards.OutputDir, manifest: dict[str, Any]) -> str | None:
    """The first listed file that is missing or whose size differs from the manifest's, said in words."""
    entries = _manifest_entries(manifest)
    infos = out.fs.get_file_info([out.path(entry["path"]) for entry in entries]) if entries else []
    for entry, info in zip(entries, infos, strict=True):
        if info.type != pafs.FileType.File:
            return f"{entry['path']}, listed in manifest.json, is missing"
        if info.size != entry["bytes"]:
            return f"{entry['path']} has {info.size} bytes where manifest.json lists {entry['bytes']}"
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


def _remove_staging(out: shards.OutputDir, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Remove the staging folder and the finished files its records placed (but those in `keep`, listed by
    the manifest in force), the claim last: a removal that stops midway leaves a staging folder that is
    still recognisably the job's. `OutputError` when `_staging/` exists without the claim."""
    if not out.exists(STAGING):
        return
    placed = sorted(_placed_files(out) - set(keep))
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


def _placed_files(out: shards.OutputDir) -> set[str]:
    """The finished files the staging folder's records place (none without a staging folder);
    `OutputError` when `_staging/` is not the job's (no claim) or a record is not one."""
    if not out.exists(STAGING):
        return set()
    if not out.exists(CLAIM):
        raise OutputError(
            f"{out.path(STAGING)} was not made by vl2prep (it holds no {posixpath.basename(CLAIM)}); "
            "move it away or choose another output.dir"
        )
    move = f"move {out.path(STAGING)} away or choose another output.dir"
    try:
        placed = shards.placed_files(out)
    except ValueError as error:
        raise OutputError(f"{error}; {move}") from None
    strange = sorted(path for path in placed if not OUTPUT_FILE.fullmatch(path))
    if strange:
        raise OutputError(
            f"{out.path(shards.PLACED)} lists {strange[0][:200]!r}, not a file vl2prep writes; {move}"
        )
    return placed


def _refuse_unlisted_files(out: shards.OutputDir) -> None:
    """`OutputError` for a file where the job writes (shards/, rejects/, filters/) that no record of the
    staging folder places: moving a finished file there would delete it."""
    placed = _placed_files(out)
    for folder in ("shards", "rejects", "filters"):
        for path in out.list_files(folder):
            if path not in placed:
                raise OutputError(
                    f"{out.path(path)} was not written by this job (no manifest or staging record lists "
                    "it); move it away or choose another output.dir"
                )


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
# stages 2 and 3: the Ray part


def _process(config: JobConfig, pending: list[Partition]) -> None:
    import ray

    from jobs.ray_runtime import pool_resources, start_ray, task_cpus

    start_ray(config.ray_address, config.ray_num_cpus)
    pool_size, actor_cpus = pool_resources()
    items = [
        {"source_index": p.source_index, "source": p.source, "file": p.file, "order": p.order}
        for p in pending
    ]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    # Reads are Ray tasks beside the actor pool, so that reading and tokenizing overlap on separate CPUs.
    # A read holds one input file's samples in memory and reserves that; the differing resources also keep
    # Ray Data from fusing the reads into the pool's actors.
    dataset = dataset.map(ReadPartition(config), num_cpus=task_cpus(), memory=READ_TASK_MEMORY)
    dataset = dataset.map(
        SequencePartition,
        fn_constructor_args=(config,),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool_size),
        num_cpus=actor_cpus,
    )
    for _ in dataset.iter_rows():
        pass


class ReadPartition:
    """Ray task body: read one input file, stage its samples and reject rows."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        partition = Partition(item["source_index"], item["source"], item["file"], item["order"])
        reader = self.config.readers[partition.source_index]
        out = shards.OutputDir(self.config.output_dir)
        samples, rejects, counts = [], [], Counts()
        for batch in reader.batches(partition.file):
            samples.append(batch.samples)
            rejects.append(batch.rejects)
            counts += batch.counts
        out.write_table(
            partition.staged("samples"), _concat(samples, sample_schema.SCHEMA), STAGING_COMPRESSION
        )
        out.write_table(
            partition.staged("read-rejects"), _concat(rejects, reject_schema.SCHEMA), STAGING_COMPRESSION
        )
        return {
            **item,
            "read": counts.read,
            "samples": counts.samples,
            "rejected": dict(counts.rejected),
            "seconds": time.perf_counter() - started,
        }


class SequencePartition:
    """Ray actor: holds the tokenizer (loaded once) and turns staged samples into shard rows."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.tokenizer = config.load_tokenizer()
        self.builders = [
            SequenceBuilder(self.tokenizer, config.shape, options) for options in config.sequence_options
        ]

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        partition = Partition(item["source_index"], item["source"], item["file"], item["order"])
        index = partition.source_index
        out = shards.OutputDir(self.config.output_dir)
        samples = out.read_table(partition.staged("samples"))
        rejects = []
        chosen = self.config.filters[index]
        if chosen:
            measured = filters.measure(samples, chosen.quantities, self.config.shape, self.tokenizer)
            dropped = filters.dropped_by(chosen, measured)
            rejects.append(filters.reject_rows(chosen, samples, measured, dropped, partition.source))
            measurements = filters.measurement_table(samples, measured, dropped)
            out.write_table(partition.staged("measures"), measurements, STAGING_COMPRESSION)
            samples = samples.filter(pc.is_null(dropped))
        rows, built_rejects = self.builders[index].build_table(samples)
        rejects.append(built_rejects)
        rejected_table = pa.concat_tables(rejects)
        out.write_table(partition.staged("rows"), rows, STAGING_COMPRESSION)
        out.write_table(partition.staged("sequence-rejects"), rejected_table, STAGING_COMPRESSION)
        keys = 0
        options = self.config.dedup[index]
        if options is not None:
            built = samples.filter(
                pc.invert(pc.is_in(samples.column("sample_id"), built_rejects.column("sample_id")))
            )
            key_rows = dedup.sample_keys(built, options, partition.order)
            out.write_table(partition.staged("keys"), key_rows, STAGING_COMPRESSION)
            keys = key_rows.num_rows
        rejected = dict(item["rejected"])
        for reason in rejected_table.column("reason").to_pylist():
            rejected[reason] = rejected.get(reason, 0) + 1
        done = {
            "source": partition.source,
            "file": partition.file,
            "read": item["read"],
            "written": item["samples"] - rejected_table.num_rows,
            "rows": rows.num_rows,
            "rejected": rejected,
            "tokens": _column_sum(rows, "seq_len"),
            "image_tokens": _column_sum(rows, "num_image_tokens"),
            "loss_tokens": _column_sum(rows, "num_loss_tokens"),
            "keys": keys,
            "seconds": item["seconds"] + time.perf_counter() - started,
        }
        out.write_json(partition.staged("done"), done)
        return {"source": partition.source, "file": partition.file, "rows": rows.num_rows}


def _deduplicate(config: JobConfig, out: shards.OutputDir, partitions: list[Partition]) -> None:
    """Stage 3b: find the duplicates among the staged keys (a Ray shuffle), unless no source dedups or an
    earlier run of this staging finished it."""
    keyed = [p for p in partitions if config.dedup[p.source_index] is not None]
    if not keyed or out.exists(dedup_stage.DONE):
        return
    from jobs.ray_runtime import start_ray, task_cpus

    total = sum(out.read_json(p.staged("done"))["keys"] for p in keyed)
    start_ray(config.ray_address, config.ray_num_cpus)
    import ray

    dedup_stage.run_dedup(
        config.output_dir,
        [(p.order, p.id, p.staged("keys")) for p in keyed],
        total,
        cpus=ray.cluster_resources().get("CPU", 1),
        task_cpus=task_cpus(),
    )


# ------------------------------------------------------------------------------------------------
# stage 4: commit


def _commit(
    config: JobConfig, out: shards.OutputDir, partitions: list[Partition], identity: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Write shards and rejects from the staged partitions, in order. Returns the manifest (the caller
    writes it, last) and the worker seconds spent per source."""
    totals = {reader.config.name: SourceTotals() for reader in config.readers}
    rejects = shards.ShardWriter(
        out, "rejects", reject_schema.SCHEMA, config.shard_target_bytes, config.compression
    )
    shard_infos: list[dict[str, Any]] = []
    measures = shards.ShardWriter(
        out, "filters", filters.MEASUREMENT_SCHEMA, config.shard_target_bytes, config.compression
    )
    packer = Packer(config.sequence_options[0].max_seq_len or config.shape.max_seq_len, _pad_id(config))
    packed = (
        shards.ShardWriter(
            out, "shards/packed", shard_schema.SCHEMA, config.shard_target_bytes, config.compression
        )
        if config.packing
        else None
    )
    for index, reader in enumerate(config.readers):
        name = reader.config.name
        writer = shards.ShardWriter(
            out, f"shards/{name}", shard_schema.SCHEMA, config.shard_target_bytes, config.compression
        )
        for partition in (p for p in partitions if p.source_index == index):
            totals[name].add(out.read_json(partition.staged("done")))
            rows = out.read_table(partition.staged("rows"))
            duplicates = dedup_stage.staged_duplicates(out, partition.id)
            if duplicates is not None:
                dropped = pc.fill_null(pc.is_in(rows.column("key"), duplicates.column("key")), False)
                duplicate_rejects = dedup.reject_rows(duplicates)
                totals[name].remove_duplicates(rows.filter(dropped), duplicate_rejects)
                rows = rows.filter(pc.invert(dropped))
            if packed is not None:
                for row in rows.to_pylist():
                    made = packer.add(row)
                    if made:
                        packed.write(shard_schema.to_table(made))
            else:
                writer.write(rows)
            rejects.write(out.read_table(partition.staged("read-rejects")))
            rejects.write(out.read_table(partition.staged("sequence-rejects")))
            if duplicates is not None:
                rejects.write(duplicate_rejects)
            if config.filters[index]:
                measures.write(out.read_table(partition.staged("measures")))
        shard_infos += [{"source": name, **info.to_dict()} for info in writer.close()]
    if packed is not None:
        packed.write(shard_schema.to_table(packer.flush()))
        shard_infos += [{"source": "packed", **info.to_dict()} for info in packed.close()]
    reject_infos = [info.to_dict() for info in rejects.close()]
    measure_infos = [info.to_dict() for info in measures.close()]

    sources = {}
    for name, total in totals.items():
        if total.read != total.written + total.rejected_total:
            raise RuntimeError(
                f"source {name}: counts do not reconcile: read {total.read} != written {total.written} "
                f"+ rejected {total.rejected_total}"
            )
        sources[name] = {
            "read": total.read,
            "written": total.written,
            "rows": total.rows,
            "rejected": dict(sorted(total.rejected.items())),
            "rejected_total": total.rejected_total,
            "tokens": total.tokens,
            "image_tokens": total.image_tokens,
            "loss_tokens": total.loss_tokens,
        }
    tokenizer = config.load_tokenizer()
    manifest = {
        "vl2prep_manifest": MANIFEST_VERSION,
        "schema_versions": {
            "sample": sample_schema.SCHEMA_VERSION,
            "reject": reject_schema.SCHEMA_VERSION,
            "shard": shard_schema.SCHEMA_VERSION,
        },
        "code": code_identity(),
        "config": config.raw,
        "config_sha256": identity,
        "model_shape": {"name": config.shape.name, "fingerprint": config.shape.fingerprint()},
        "tokenizer": {"kind": tokenizer.kind, "sha256": tokenizer.identity, "pieces": tokenizer.piece_count},
        "max_seq_len": packer.max_seq_len,
        "packing": (
            {
                "rows": packer.stats.rows,
                "documents": packer.stats.documents,
                "efficiency": packer.stats.efficiency,
            }
            if config.packing
            else None
        ),
        "shards": shard_infos,
        "rejects": reject_infos,
        "filters": {
            "thresholds": {
                reader.config.name: chosen.thresholds
                for reader, chosen in zip(config.readers, config.filters, strict=True)
                if chosen
            },
            "measurements": measure_infos,
        },
        "dedup": (
            {"duplicates": out.read_json(dedup_stage.DONE)["duplicates"]}
            if out.exists(dedup_stage.DONE)
            else None
        ),
        "sources": sources,
    }
    return manifest, {name: total.seconds for name, total in totals.items()}


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


def _claim_staging(out: shards.OutputDir, identity: str) -> None:
    """Keep staged work only if this config and this code made it; otherwise start over."""
    claim = {"config_sha256": identity, "code": code_identity()}
    try:
        if out.exists(CLAIM) and out.read_json(CLAIM) == claim:
            return
    except ValueError:
        pass  # a claim that is not JSON matches nothing: that staging is started over like any other
    _remove_staging(out)
    out.write_json(CLAIM, claim)


def _concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _column_sum(table: pa.Table, column: str) -> int:
    return int(pc.sum(table.column(column)).as_py() or 0) if table.num_rows else 0


def _pad_id(config: JobConfig) -> int:
    special = config.shape.special_tokens
    assert special is not None  # the tokenizer check guarantees special ids
    return special.pad


def _print_summary(
    manifest: dict[str, Any], worker_seconds: dict[str, float], seconds: float, out_stream: Any
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
    for info in manifest["shards"]:
        counted[info["source"]] = counted.get(info["source"], 0) + 1
    lines = [header]
    for name, total in manifest["sources"].items():
        lines.append(
            (
                name,
                str(total["read"]),
                str(total["written"]),
                str(total["rejected_total"]),
                str(total["rows"]),
                str(total["tokens"]),
                str(total["image_tokens"]),
                str(total["loss_tokens"]),
                str(counted.get(name, 0)),
                f"{total['read'] / worker_seconds[name]:.0f}" if worker_seconds.get(name) else "",
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
    read = sum(t["read"] for t in manifest["sources"].values())
    rejected: dict[str, int] = {}
    for total in manifest["sources"].values():
        for reason, count in total["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items())) or "none"
    print(f"\nrejects by reason: {reasons}", file=out_stream)
    filter_reasons = {spec.reason for spec in filters.FILTERS.values()}
    if manifest["filters"]["thresholds"]:
        dropped = sum(count for reason, count in rejected.items() if reason in filter_reasons)
        measured = sum(entry["rows"] for entry in manifest["filters"]["measurements"])
        print(f"filters: {dropped} of {measured} measured samples dropped (OUT/filters/)", file=out_stream)
    if manifest["dedup"] is not None:
        print(f"dedup: {manifest['dedup']['duplicates']} duplicates dropped", file=out_stream)
    if manifest["packing"]:
        packing = manifest["packing"]
        print(f"packing: {packing['rows']} rows, efficiency {packing['efficiency']:.1%}", file=out_stream)
    print(
        f"{read} records in {seconds:.1f} s ({read / max(seconds, 1e-9):.0f} records/s; a source's rec/s is "
        f"per worker-second spent on its files); {len(manifest['shards'])} shards, manifest.json written.",
        file=out_stream,
    )
