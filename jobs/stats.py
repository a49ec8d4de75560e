"""The stats job: statistics of a finished output (manifest, shards, rejects) as a Ray job.

One Ray task per shard, reject or filter measurement file listed in the manifest computes a
`pipeline.stats.Partial` of that file, reading it batch by batch and only the columns the statistics need
(never image bytes); the driver merges the partials as they arrive, so no step holds all rows. The driver
then writes `stats.json`, `report.html` and `report.md` to `OUT/stats/` (or to `report_dir`). Files under
`stats/` are not listed in the manifest.

The model shape comes from the manifest (`config.model_shape`, else `model_shape.name`); the tokenizer from
the config as recorded (`default`, or its path as written, relative to the working directory) and is used
only if its sha256 matches the manifest. Without it, top tokens have no text and the byte-fallback share
and characters per token are null.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import pyarrow.parquet as pq

import model_shapes
from pipeline import report, shards, stats
from pipeline import tokenizer as tokenizers

__all__ = ["STATS_DIR", "STATS_FILE", "file_partial", "run"]

STATS_DIR = "stats"
STATS_FILE = f"{STATS_DIR}/stats.json"
VALIDATION_FILE = "validation.json"
"""Written by `jobs.validate` beside stats.json; its results become a section of the report."""
BATCH_ROWS = 1024
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


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
    out_stream = out_stream or sys.stdout
    out = shards.OutputDir(location)
    if not out.exists(shards.MANIFEST):
        print(f"{location}: no manifest.json: not a finished output", file=sys.stderr)
        return 2
    manifest = out.read_json(shards.MANIFEST)
    try:
        shape = _shape(manifest)
    except model_shapes.ShapeError as error:
        print(f"{location}: model shape: {error}", file=sys.stderr)
        return 2
    tokenizer_spec = _tokenizer_spec(manifest)
    if tokenizer_path is not None:
        tokenizer_spec = (tokenizer_path, tokenizer_spec[1])
    tokenizer = _tokenizer(tokenizer_spec, shape, manifest["tokenizer"]["sha256"])
    if tokenizer is None:
        print(
            "stats: tokenizer not available: top tokens without text, no byte-fallback share", file=out_stream
        )
    else:
        shape = tokenizer.shape
    context = stats.context_for(
        shape, manifest["max_seq_len"], _byte_fallback_ids(tokenizer) if tokenizer else None
    )
    files = [(e["path"], "shard") for e in manifest["shards"]]
    files += [(e["path"], "reject") for e in manifest["rejects"]]
    files += [(e["path"], "filter") for e in (manifest.get("filters") or {}).get("measurements", [])]
    spec = tokenizer_spec if tokenizer else None
    merged = _partials(location, files, context, spec, shape, ray_address, num_cpus)
    token_text = (lambda token_id: tokenizer.decode([token_id])) if tokenizer else None
    result = stats.finalize(merged, context, manifest, token_text)

    target = shards.OutputDir(report_dir) if report_dir else shards.OutputDir(out.path(STATS_DIR))
    target.write_json("stats.json", result)
    # A validation run (jobs.validate) keeps its section in a report made again afterwards.
    validation = target.read_json(VALIDATION_FILE) if target.exists(VALIDATION_FILE) else None
    target.write_bytes("report.html", report.html(result, validation).encode())
    target.write_bytes("report.md", report.markdown(result, validation).encode())
    print(
        f"stats: {len(files)} files → {target.location}/{{stats.json, report.html, report.md}}",
        file=out_stream,
    )
    return 0


def _shape(manifest: dict[str, Any]) -> model_shapes.ModelShape:
    configured = manifest.get("config", {}).get("model_shape")
    if isinstance(configured, str):
        try:
            return model_shapes.load(configured)
        except model_shapes.ShapeError:
            pass  # a path that has moved: the name may still be a known shape
    return model_shapes.load(manifest["model_shape"]["name"])


def _tokenizer_spec(manifest: dict[str, Any]) -> tuple[str, str | None]:
    configured = manifest.get("config", {}).get("tokenizer", "default")
    if isinstance(configured, dict):
        return str(configured.get("path")), configured.get("kind")
    return str(configured), None


def _tokenizer(
    spec: tuple[str, str | None], shape: model_shapes.ModelShape, sha256: str
) -> tokenizers.Tokenizer | None:
    """The output's tokenizer, or None when it cannot be loaded or is not the one the rows were made with."""
    try:
        tokenizer = tokenizers.load(spec[0], shape, kind=spec[1])
    except (tokenizers.TokenizerError, OSError, ValueError):
        return None
    return tokenizer if tokenizer.identity == sha256 else None


_TOKENIZERS: dict[tuple[str, str | None], tokenizers.Tokenizer] = {}


def _task_tokenizer(spec: tuple[str, str | None], shape: model_shapes.ModelShape) -> tokenizers.Tokenizer:
    """The tokenizer, loaded once per worker process."""
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = tokenizers.load(spec[0], shape, kind=spec[1])
    return _TOKENIZERS[spec]


def _byte_fallback_ids(tokenizer: tokenizers.Tokenizer) -> list[int]:
    """Ids of the byte-fallback pieces (`<0xNN>`) of a sentencepiece or Hugging Face tokenizer."""
    if tokenizer.kind == "sentencepiece":
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(tokenizer.path))
        return [i for i in range(processor.get_piece_size()) if processor.is_byte(i)]
    from tokenizers import Tokenizer as HfTokenizer

    vocabulary = HfTokenizer.from_file(str(tokenizer.path)).get_vocab()
    return sorted(i for piece, i in vocabulary.items() if _BYTE_PIECE.fullmatch(piece))


def _partials(
    location: str,
    files: list[tuple[str, str]],
    context: stats.Context,
    tokenizer_spec: tuple[str, str | None] | None,
    shape: model_shapes.ModelShape,
    ray_address: str | None,
    num_cpus: int | None,
) -> stats.Partial:
    """One Ray task per file; partials are merged as they finish."""
    import ray  # after jobs.ray_runtime, which sets Ray's environment

    from jobs.ray_runtime import start_ray, task_cpus

    start_ray(ray_address, num_cpus)
    task = ray.remote(file_partial).options(num_cpus=task_cpus())
    pending = [task.remote(location, path, what, context, tokenizer_spec, shape) for path, what in files]
    merged = stats.Partial()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        merged = stats.merge(merged, ray.get(done[0]))
    return merged


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
    is decoded."""
    out = shards.OutputDir(location)
    parquet = pq.ParquetFile(out.path(path), filesystem=out.fs)
    merged = stats.Partial()
    if what == "filter":
        for batch in parquet.iter_batches(BATCH_ROWS * 64):
            merged = stats.merge(merged, stats.filter_partial(batch))
        return merged
    if what == "reject":
        for batch in parquet.iter_batches(BATCH_ROWS, columns=list(stats.REJECT_COLUMNS)):
            merged = stats.merge(merged, stats.reject_partial(batch))
        return merged
    decode = _task_tokenizer(tokenizer_spec, shape).decode if tokenizer_spec and shape else None
    first_row = 0
    for batch in parquet.iter_batches(BATCH_ROWS, columns=list(stats.SHARD_COLUMNS)):
        merged = stats.merge(merged, stats.shard_partial(batch, context, decode, first_row))
        first_row += batch.num_rows
    return merged
