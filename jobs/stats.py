"""The stats job: statistics of a finished output (manifest, shards, rejects) as a Ray job.

One Ray task per shard, reject or filter measurement file listed in the manifest computes a
`pipeline.stats.Partial` of that file, reading it batch by batch and only the columns the statistics need
(never image bytes); the driver merges the partials as they arrive, so no step holds all rows. The pass is
linear in the number of files: at most `IN_FLIGHT_PER_CPU` tasks per CPU are submitted at a time, finished
ones are collected a quarter of that window at a time (each `ray.wait` costs the length of the list it is
given: one result per call over all the files was quadratic), and each partial is added in place into one
(`pipeline.stats.Partial.add`: the cost of a merge is that of the partial merged, token counts are arrays).
While files finish, the driver prints a progress line every `jobs.progress.PROGRESS_EVERY_S` seconds and a
last one at the end (files done / total, rows read as the manifest lists them, rows/s, time left). Then one
Ray task per source reads the first `GALLERY_ROWS` rows of its first shard (one small batch, never the file)
and makes their `pipeline.report.gallery_entry` (a thumbnail of the first image's canvas with its tile grid,
the first tokens decoded): the `gallery` of `stats.json`, shown by the report. It depends only on the rows
and the tokenizer, so `stats.json` stays the same bytes when made again.
The driver then writes `stats.json`, `report.html` and `report.md` to `OUT/stats/` (or to `report_dir`).
Files under `stats/` are not listed in the manifest.

The model shape comes from the manifest (`config.model_shape`, else `model_shape.name`); the tokenizer from
the config as recorded (a shipped tokenizer's name, or its path as written, relative to the working
directory), else the shipped tokenizer with the manifest's sha256 (`pipeline.tokenizer.load_recorded`); it is
used only if its sha256 matches the manifest. Without it, top tokens have no text and the byte-fallback share
and characters per token are null.

Damaged outputs: rows with impossible values are counted as `pipeline.stats` describes. A file of the manifest
that cannot be read (truncated, not Parquet, missing) or whose rows cannot be counted at all has its
statistics left out whole (a file half read would skew every number without saying so), is listed under
`problems` in `stats.json` and is one line on stderr; the statistics of every other file are still written
(a long pass is not lost to one damaged file), and the exit code is 2, so that no script takes the report for
a complete one. A manifest that cannot be read (not JSON) is one line and exit 2, as when there is none.
"""

from __future__ import annotations

import datetime
import itertools
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import model_shapes
from jobs.progress import Progress
from jobs.ray_runtime import ray_scope
from pipeline import report, shards, stats, verify
from pipeline import tokenizer as tokenizers

__all__ = ["STATS_DIR", "STATS_FILE", "file_partial", "run"]

STATS_DIR = "stats"
STATS_FILE = f"{STATS_DIR}/stats.json"
VALIDATION_FILE = "validation.json"
"""Written by `jobs.validate` beside stats.json; its results become a section of the report."""
BATCH_ROWS = 1024
GALLERY_ROWS = 2
"""Rows of each source shown in the report's gallery: the first ones of its first shard."""
IN_FLIGHT_PER_CPU = 32
"""Tasks submitted and not yet collected, per CPU of the cluster: enough to keep every CPU busy while the
driver merges, few enough that finished partials (small: token counts travel sparse) never pile up."""


def run(
    location: str,
    report_dir: str | None = None,
    tokenizer_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    out_stream: Any = None,
) -> int:
    """Compute and write the statistics of the output at `location`; returns the process exit code.
    `tokenizer_path` replaces the tokenizer path recorded in the config (which may be relative)."""
    with ray_scope():  # the Ray this call starts (if any) is stopped when it ends
        return _run(location, report_dir, tokenizer_path, ray_address, num_cpus, out_stream)


def _run(
    location: str,
    report_dir: str | None,
    tokenizer_path: str | None,
    ray_address: str | None,
    num_cpus: int | None,
    out_stream: Any,
) -> int:
    out_stream = out_stream or sys.stdout
    out = shards.OutputDir(location)
    if not out.exists(shards.MANIFEST):
        print(f"{location}: no manifest.json: not a finished output", file=sys.stderr)
        return 2
    try:
        manifest = out.read_json(shards.MANIFEST)
    except (OSError, ValueError) as error:
        print(f"{location}: cannot read {shards.MANIFEST}: {error}", file=sys.stderr)
        return 2
    try:
        shape = _shape(manifest)
    except model_shapes.ShapeError as error:
        print(f"{location}: model shape: {error}", file=sys.stderr)
        return 2
    tokenizer = _tokenizer(manifest, shape, tokenizer_path)
    if tokenizer is None:
        print(
            "stats: tokenizer not available: top tokens without text, no byte-fallback share", file=out_stream
        )
    else:
        shape = tokenizer.shape
    context = stats.context_for(
        shape,
        manifest["max_seq_len"],
        tokenizer.byte_fallback_ids() if tokenizer else None,
        tokenizer.piece_count if tokenizer else None,
    )
    listed = {
        "shard": manifest["shards"],
        "reject": manifest["rejects"],
        "filter": (manifest.get("filters") or {}).get("measurements", []),
    }
    files = [(e["path"], what) for what, entries in listed.items() for e in entries]
    spec = (tokenizer.name or str(tokenizer.path), tokenizer.kind) if tokenizer else None
    # Rows as the manifest lists them, for the progress lines only (a damaged count is shown as 0).
    rows = {
        e["path"]: e["rows"] if isinstance(e.get("rows"), int) else 0
        for entries in listed.values()
        for e in entries
    }
    progress = Progress(len(files), out_stream, counts=("rows read",), rate_unit="rows")
    merged = _partials(location, files, context, spec, shape, ray_address, num_cpus, rows, progress)
    progress.finish()
    token_text = (
        (lambda token_id: tokenizer.decode([token_id]) if 0 <= token_id < tokenizer.piece_count else None)
        if tokenizer
        else None
    )
    result = stats.finalize(merged, context, manifest, token_text)
    result["gallery"] = _gallery(location, manifest["shards"], spec, shape)

    target = shards.OutputDir(report_dir) if report_dir else out.subfolder(STATS_DIR)
    target.write_json("stats.json", result)
    # A validation run (jobs.validate) keeps its section in a report made again afterwards.
    validation = target.read_json(VALIDATION_FILE) if target.exists(VALIDATION_FILE) else None
    # The time goes into the report only: stats.json stays the same bytes when made again.
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    target.write_bytes("report.html", report.html(result, validation, made, out.location).encode())
    target.write_bytes("report.md", report.markdown(result, validation).encode())
    print(
        f"stats: {len(files)} files → {target.location}/{{stats.json, report.html, report.md}}",
        file=out_stream,
    )
    for problem in result["problems"]:
        print(
            f"{out.path(problem['path'])}: left out of the statistics: {problem['message']}", file=sys.stderr
        )
    return 2 if result["problems"] else 0


def _shape(manifest: dict[str, Any]) -> model_shapes.ModelShape:
    configured = manifest.get("config", {}).get("model_shape")
    if isinstance(configured, str):
        try:
            return model_shapes.load(configured)
        except model_shapes.ShapeError:
            pass  # a path that has moved: the name may still be a known shape
    return model_shapes.load(manifest["model_shape"]["name"])


def _tokenizer(
    manifest: dict[str, Any], shape: model_shapes.ModelShape, path: str | None
) -> tokenizers.Tokenizer | None:
    """The output's tokenizer, or None when it cannot be found (see the module docstring)."""
    recorded = manifest.get("config", {}).get("tokenizer", "default")
    try:
        return tokenizers.load_recorded(recorded, shape, manifest["tokenizer"]["sha256"], path)
    except tokenizers.TokenizerError:
        return None


_TOKENIZERS: dict[tuple[str, str | None], tokenizers.Tokenizer] = {}


def _task_tokenizer(spec: tuple[str, str | None], shape: model_shapes.ModelShape) -> tokenizers.Tokenizer:
    """The tokenizer, loaded once per worker process."""
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = tokenizers.load(spec[0], shape, kind=spec[1])
    return _TOKENIZERS[spec]


def _partials(
    location: str,
    files: list[tuple[str, str]],
    context: stats.Context,
    tokenizer_spec: tuple[str, str | None] | None,
    shape: model_shapes.ModelShape,
    ray_address: str | None,
    num_cpus: int | None,
    rows: dict[str, int],
    progress: Progress,
) -> stats.Partial:
    """One Ray task per file, a bounded window of them in flight; partials are merged in place as they
    finish (see the module docstring), each finished file advancing `progress` by its `rows`."""
    from jobs.ray_runtime import start_ray, task_cpus

    start_ray(ray_address, num_cpus)
    import ray  # after start_ray, which sets Ray's environment first

    task = ray.remote(file_partial).options(num_cpus=task_cpus())
    window = max(8, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    queued = iter(files)
    pending: list[Any] = []
    paths: dict[Any, str] = {}
    merged = stats.Partial()
    while True:
        for path, what in itertools.islice(queued, window - len(pending)):
            pending.append(task.remote(location, path, what, context, tokenizer_spec, shape))
            paths[pending[-1]] = path
        if not pending:
            return merged
        done, pending = ray.wait(pending, num_returns=min(len(pending), max(1, window // 4)))
        for ref, partial in zip(done, ray.get(done), strict=True):
            merged.add(partial)
            progress.advance(rows.get(paths.pop(ref), 0))


def _gallery(
    location: str,
    shards_listed: list[dict[str, Any]],
    tokenizer_spec: tuple[str, str | None] | None,
    shape: model_shapes.ModelShape,
) -> dict[str, list[dict[str, Any]]]:
    """Source → the gallery entries of the first `GALLERY_ROWS` rows of its first shard holding rows (in
    manifest order), sources sorted by name as stats.json keeps them, so that a report made again from it
    (`jobs.validate`) shows the same order; one Ray task per source (Ray is already up: `_partials` started
    it)."""
    import ray

    from jobs.ray_runtime import task_cpus

    first: dict[str, str] = {}
    for entry in shards_listed:
        if isinstance(entry.get("rows"), int) and entry["rows"] > 0 and isinstance(entry.get("source"), str):
            first.setdefault(entry["source"], entry["path"])
    task = ray.remote(gallery_entries).options(num_cpus=task_cpus())
    found = ray.get([task.remote(location, path, tokenizer_spec, shape) for path in first.values()])
    return {source: entries for source, entries in sorted(zip(first, found, strict=True)) if entries}


def gallery_entries(
    location: str,
    path: str,
    tokenizer_spec: tuple[str, str | None] | None,
    shape: model_shapes.ModelShape,
    count: int = GALLERY_ROWS,
) -> list[dict[str, Any]]:
    """The `pipeline.report.gallery_entry` of each of the first `count` rows of one shard, read one batch of
    `count` rows at a time (never the whole file); none when the file cannot be read (its statistics say
    so)."""
    tokenizer = _task_tokenizer(tokenizer_spec, shape) if tokenizer_spec else None
    out = shards.OutputDir(location)
    try:
        rows = list(itertools.islice(verify.iter_rows(out, path, batch_rows=count), count))
    except (OSError, pa.ArrowException):
        return []
    return [report.gallery_entry(row, shape, tokenizer, path, number) for number, row in enumerate(rows)]


def file_partial(
    location: str,
    path: str,
    what: str,
    context: stats.Context,
    tokenizer_spec: tuple[str, str | None] | None = None,
    shape: model_shapes.ModelShape | None = None,
) -> stats.Partial:
    """The partial of one shard (`what` = "shard"), reject ("reject") or filter measurement ("filter") file,
    read in batches of the needed columns. With a tokenizer spec and shape, the characters-per-token sample
    is decoded. A file that cannot be read, or whose rows cannot be counted, gives a partial holding only its
    problem (see the module docstring)."""
    decode = _task_tokenizer(tokenizer_spec, shape).decode if tokenizer_spec and shape else None
    try:
        return _file_partial(location, path, what, context, decode)
    except (OSError, pa.ArrowException) as error:
        return stats.Partial(problems={path: f"cannot be read: {_one_line(error)}"})


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _file_partial(
    location: str, path: str, what: str, context: stats.Context, decode: Callable[[list[int]], str] | None
) -> stats.Partial:
    out = shards.OutputDir(location)
    parquet = pq.ParquetFile(out.path(path), filesystem=out.fs)
    merged = stats.Partial()
    if what == "filter":
        for batch in parquet.iter_batches(BATCH_ROWS * 64):
            merged.add(stats.filter_partial(batch))
        return merged
    if what == "reject":
        for batch in parquet.iter_batches(BATCH_ROWS, columns=list(stats.REJECT_COLUMNS)):
            merged.add(stats.reject_partial(batch))
        return merged
    first_row = 0
    leaves = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    columns = [c for c in stats.SHARD_COLUMNS if any(p == c or p.startswith(f"{c}.") for p in leaves)]
    for batch in parquet.iter_batches(BATCH_ROWS, columns=columns):
        try:
            partial = stats.shard_partial(batch, context, decode, first_row)
        except (ValueError, IndexError, KeyError) as error:  # values or columns no sound shard has
            rows = f"rows {first_row}-{first_row + batch.num_rows - 1}"
            return stats.Partial(problems={path: f"{rows} cannot be counted: {_one_line(error)}"})
        merged.add(partial)
        first_row += batch.num_rows
    return merged
