"""Proving a finished output intact: every file against its manifest entry, every row against the invariants
of `schemas.shard`, and the manifest's counts against the files.

`verify(location)` streams the output (one file and one record batch at a time, so memory does not grow with
the corpus) and returns a `Report` of `Problem`s, each naming the file and, for a row, its `sample_id`.
`check_row` holds the row invariants on their own, for any code that makes or edits rows:

- `seq_len`, `labels` and `input_ids` have one length; every id lies in [0, vocab_size);
- a label is -100 or the token's own id, and -100 on every `<image>` token; a row starts with bos, labelled
  with the bos id as in the official `target_ids` (-100 in outputs of shard schema 1), and each document of a
  packed row starts with bos labelled -100;
- each image's span at its `image_token_offsets` entry is exactly `image_token_count(grid)` `<image>` ids for
  its stored grid, and no `<image>` id lies outside the spans; the grid is the one `pipeline.tiling` gives
  the image's stored size (cropping off when its document has more than two images);
- `num_image_tokens`, `num_text_tokens`, `num_loss_tokens` agree with the tokens; the row carries the
  manifest's tokenizer and shape identities; a packed row's `cu_seqlens`, `position_ids` and `documents`
  agree with each other, and its `special_strings_as_text` is its documents' sum.

Filter measurement files (`filters/`, listed under the manifest's `filters.measurements`) are checked like the
others, and the samples they say a filter dropped must equal the reject rows of that filter's reason. The
manifest's `config_sha256` must be the identity of the config it records (`pipeline.shards.config_identity`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import model_shapes
from model_shapes import ModelShape
from pipeline import images as image_io
from pipeline import layout, tiling
from pipeline.filters import FILTERS, MEASUREMENT_SCHEMA
from pipeline.shards import MANIFEST, OutputDir, canonical_json, config_identity
from schemas import reject as reject_schema
from schemas import shard as shard_schema
from schemas.shard import IGNORE_INDEX

__all__ = [
    "ARRAY_COLUMNS",
    "Expected",
    "Problem",
    "Report",
    "VerifyError",
    "check_row",
    "file_digest",
    "iter_rows",
    "shape_for",
    "verify",
]

ARRAY_COLUMNS = ("input_ids", "labels", "position_ids", "cu_seqlens")
"""The list columns `iter_rows` gives as int32 numpy arrays (None where null) instead of Python lists."""
_HASH_CHUNK = 8 * 2**20


class VerifyError(ValueError):
    """An output that cannot be read at all (no manifest, an unknown model shape)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (a path relative to the output), which row (its sample_id), and what."""

    where: str
    message: str
    sample_id: str | None = None

    def __str__(self) -> str:
        row = f" sample {self.sample_id}:" if self.sample_id is not None else ""
        return f"{self.where}:{row} {self.message}"


@dataclass
class Report:
    """What `verify` found: the first `max_problems` problems (and how many in all), and what it read."""

    max_problems: int = 1000
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    shard_files: int = 0
    shard_rows: int = 0
    reject_files: int = 0
    reject_rows: int = 0
    sources: int = 0

    @property
    def ok(self) -> bool:
        """No problem found."""
        return self.problem_count == 0

    def add(self, where: str, message: str, sample_id: str | None = None) -> None:
        """Record a problem (kept only while fewer than `max_problems` are kept)."""
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(where, message, sample_id))


@dataclass(frozen=True)
class Expected:
    """What every row of an output must carry: the shape (with special ids), the identities the manifest
    records, and the length limit (None: no limit)."""

    shape: ModelShape
    tokenizer_sha256: str
    shape_fingerprint: str
    max_seq_len: int | None = None
    shard_version: int = shard_schema.SCHEMA_VERSION


def shape_for(manifest: Mapping[str, Any], shape: ModelShape | str | None = None) -> ModelShape:
    """The model shape of an output: `shape` when given (a ModelShape or a name/path), else the variant the
    manifest names. Raises VerifyError when it cannot be loaded or has no special token ids."""
    named = manifest.get("model_shape", {}).get("name")
    if isinstance(shape, ModelShape):
        loaded = shape
    else:
        try:
            loaded = model_shapes.load(shape if shape is not None else named)
        except (model_shapes.ShapeError, TypeError) as error:
            raise VerifyError(
                f"cannot load the model shape {shape or named!r} of this output ({error}); give its file"
            ) from None
    if loaded.special_tokens is None:
        raise VerifyError(f"model shape {loaded.name!r} has no special token ids; give a shape that does")
    return loaded


def file_digest(out: OutputDir, relative: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with out.fs.open_input_stream(out.path(relative)) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def iter_rows(
    out: OutputDir, relative: str, batch_rows: int = 64, columns: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The rows of one Parquet file as dicts, one record batch at a time: `ARRAY_COLUMNS` as int32 numpy
    arrays (None where null), the other columns as Python values."""
    with out.fs.open_input_file(out.path(relative)) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
            arrays = {
                name: _list_slices(batch.column(name)) for name in ARRAY_COLUMNS if name in batch.schema.names
            }
            plain = batch.select([name for name in batch.schema.names if name not in arrays]).to_pylist()
            for index, row in enumerate(plain):
                row.update({name: values[index] for name, values in arrays.items()})
                yield row


def _list_slices(column: pa.ListArray) -> list[np.ndarray | None]:
    """Each list of an int32 list column as a numpy view (None for a null list)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(column))]


# ------------------------------------------------------------------------------------------------
# one row


def check_row(row: Mapping[str, Any], expected: Expected) -> list[str]:
    """What is wrong with one shard row (`input_ids`/`labels` as sequences or arrays); empty when nothing."""
    shape = expected.shape
    special = shape.special_tokens
    assert special is not None  # shape_for guarantees it
    ids = np.asarray(row["input_ids"], dtype=np.int64)
    labels = np.asarray(row["labels"], dtype=np.int64)
    length = len(ids)
    problems: list[str] = []
    if length == 0:
        return ["input_ids is empty"]
    if row["seq_len"] != length:
        problems.append(f"seq_len {row['seq_len']} but input_ids holds {length} tokens")
    if expected.max_seq_len is not None and length > expected.max_seq_len:
        problems.append(f"{length} tokens, more than max_seq_len {expected.max_seq_len}")
    if row["tokenizer_sha256"] != expected.tokenizer_sha256:
        problems.append(f"tokenizer_sha256 {row['tokenizer_sha256']} differs from the manifest's")
    if row["shape_fingerprint"] != expected.shape_fingerprint:
        problems.append(f"shape_fingerprint {row['shape_fingerprint']} differs from the manifest's")
    outside = np.flatnonzero((ids < 0) | (ids >= shape.language.vocab_size))
    if len(outside):
        problems.append(
            f"{len(outside)} ids outside [0, {shape.language.vocab_size}), first {ids[outside[0]]} "
            f"at position {outside[0]}"
        )
    if len(labels) != length:
        problems.append(f"labels holds {len(labels)} values for {length} tokens")
        return problems

    trained = labels != IGNORE_INDEX
    wrong = np.flatnonzero(trained & (labels != ids))
    if len(wrong):
        problems.append(
            f"{len(wrong)} labels are neither -100 nor the token's id, first at position {wrong[0]}"
        )
    is_image = ids == special.image
    if (trained & is_image).any():
        problems.append(f"{int((trained & is_image).sum())} <image> tokens are trained on (label not -100)")
    if row["num_loss_tokens"] != int(trained[1:].sum()):
        problems.append(
            f"num_loss_tokens {row['num_loss_tokens']} but {int(trained[1:].sum())} labels after position 0 "
            "are not -100"
        )

    bounds, documents = _documents(row, length, problems)
    packed = row["kind"] == "packed"
    first_label = IGNORE_INDEX if packed or expected.shard_version < 2 else special.bos
    for start in bounds[:documents]:
        if ids[start] != special.bos or labels[start] != first_label:
            problems.append(
                f"the document at position {start} does not start with bos labelled {first_label}"
            )
    if expected.shard_version >= 2:
        problems += _check_special_strings(row, packed)
    problems += _check_images(row, ids, is_image, bounds, shape)
    if row["num_image_tokens"] != int(is_image.sum()):
        problems.append(f"num_image_tokens {row['num_image_tokens']} but the row holds {int(is_image.sum())}")
    text_tokens = int(bounds[documents]) - int(is_image.sum())
    if row["num_text_tokens"] != text_tokens:
        problems.append(f"num_text_tokens {row['num_text_tokens']} but the documents hold {text_tokens}")
    for index, region in enumerate(row["regions"]):
        if not 0 <= region["image"] < len(row["images"]):
            problems.append(f"region {index} refers to image {region['image']} of {len(row['images'])}")
        if not region["boxes"] or any(len(box) != 4 for box in region["boxes"]):
            problems.append(f"region {index} has no box or a box without 4 coordinates")
    return problems


def _check_special_strings(row: Mapping[str, Any], packed: bool) -> list[str]:
    count = row["special_strings_as_text"]
    if count < 0:
        return [f"special_strings_as_text is negative ({count})"]
    if packed and row["documents"] is not None:
        total = sum(document["special_strings_as_text"] for document in row["documents"])
        if count != total:
            return [f"special_strings_as_text {count} but its documents hold {total}"]
    return []


def _documents(row: Mapping[str, Any], length: int, problems: list[str]) -> tuple[np.ndarray, int]:
    """The segment boundaries of a row ([0, seq_len] unless packed) and how many segments are documents
    (the rest, at most one, is a packed row's pad tail)."""
    packed = row["kind"] == "packed"
    cu_seqlens, positions, documents = row.get("cu_seqlens"), row.get("position_ids"), row.get("documents")
    if not packed:
        if cu_seqlens is not None or positions is not None or documents is not None:
            problems.append("cu_seqlens, position_ids and documents must be null in a row that is not packed")
        return np.array([0, length]), 1
    if cu_seqlens is None or positions is None or documents is None:
        problems.append("a packed row needs cu_seqlens, position_ids and documents")
        return np.array([0, length]), 1
    bounds = np.asarray(cu_seqlens, dtype=np.int64)
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != length or (np.diff(bounds) <= 0).any():
        problems.append(f"cu_seqlens {bounds.tolist()} are not increasing from 0 to seq_len {length}")
        return np.array([0, length]), 1
    lengths = np.diff(bounds)
    doc_lengths = [document["seq_len"] for document in documents]
    if lengths[: len(doc_lengths)].tolist() != doc_lengths or len(lengths) - len(doc_lengths) not in (0, 1):
        problems.append(f"documents' lengths {doc_lengths} do not match cu_seqlens {bounds.tolist()}")
        return bounds, len(lengths)
    restart = np.concatenate([np.arange(n) for n in lengths])
    if len(positions) != length or not np.array_equal(np.asarray(positions), restart):
        problems.append("position_ids do not restart at 0 at every cu_seqlens boundary")
    return bounds, len(doc_lengths)


def _check_images(
    row: Mapping[str, Any], ids: np.ndarray, is_image: np.ndarray, bounds: np.ndarray, shape: ModelShape
) -> list[str]:
    images, crops, offsets = row["images"], row["images_spatial_crop"], row["image_token_offsets"]
    if not len(images) == len(crops) == len(offsets):
        return [f"{len(images)} images, {len(crops)} images_spatial_crop rows, {len(offsets)} offsets"]
    problems: list[str] = []
    in_span = np.zeros(len(ids), dtype=bool)
    document_of = np.searchsorted(bounds, np.asarray(offsets, dtype=np.int64), side="right") - 1
    images_in_document = Counter(document_of.tolist())
    for index, (image, grid, offset) in enumerate(zip(images, crops, offsets, strict=True)):
        try:
            count = layout.image_token_count(tuple(grid), shape)
        except ValueError:
            problems.append(f"image {index}: images_spatial_crop {grid} is not a grid")
            continue
        span = ids[offset : offset + count]
        if offset < 0 or len(span) != count or not (span == shape.special_tokens.image).all():
            found = int((span == shape.special_tokens.image).sum()) if offset >= 0 else 0
            problems.append(
                f"image {index}: the span at offset {offset} for grid {grid[0]}×{grid[1]} should be {count} "
                f"<image> tokens, found {found}"
            )
        elif in_span[offset : offset + count].any():
            problems.append(f"image {index}: its span at offset {offset} overlaps another image's")
        in_span[max(offset, 0) : offset + count] = True
        cropping = tiling.cropping_for(images_in_document[int(document_of[index])])
        size = (image["width_px"], image["height_px"])
        if min(size) >= 1 and tiling.best_grid(size, shape, cropping=cropping) != tuple(grid):
            problems.append(
                f"image {index}: stored grid {grid[0]}×{grid[1]} but a {size[0]}×{size[1]} image tiles to "
                "{}×{}".format(*tiling.best_grid(size, shape, cropping=cropping))
            )
        problems += _check_image_header(index, image)
    stray = np.flatnonzero(is_image & ~in_span)
    if len(stray):
        problems.append(f"{len(stray)} <image> tokens outside the image spans, first at position {stray[0]}")
    return problems


def _check_image_header(index: int, image: Mapping[str, Any]) -> list[str]:
    if image["bytes"] is None:
        return []
    try:
        header = image_io.read_header(image["bytes"])
    except image_io.ImageError as error:
        return [f"image {index}: {error}"]
    if header.size != (image["width_px"], image["height_px"]):
        return [
            f"image {index}: stored as {image['width_px']}×{image['height_px']} but its bytes are "
            f"{header.width}×{header.height}"
        ]
    return []


# ------------------------------------------------------------------------------------------------
# a whole output


def verify(
    location: str, shape: ModelShape | str | None = None, max_problems: int = 1000, batch_rows: int = 64
) -> Report:
    """Check the output at `location` completely (see the module docstring). Raises VerifyError when it has
    no readable manifest or its model shape cannot be loaded; everything else is a `Problem`."""
    out = OutputDir(location)
    if not out.exists(MANIFEST):
        raise VerifyError(f"{location}: no {MANIFEST}; not a finished output")
    try:
        manifest = out.read_json(MANIFEST)
    except ValueError as error:
        raise VerifyError(f"{location}/{MANIFEST}: not valid JSON: {error}") from None
    loaded = shape_for(manifest, shape)
    report = Report(max_problems=max_problems, sources=len(manifest.get("sources", {})))
    if loaded.fingerprint() != manifest["model_shape"]["fingerprint"]:
        report.add(
            MANIFEST, f"model shape {loaded.name} has fingerprint {loaded.fingerprint()}, not the manifest's"
        )
    _check_identity(manifest, report)
    shard_version = manifest.get("schema_versions", {}).get("shard", shard_schema.SCHEMA_VERSION)
    try:
        shards_schema = shard_schema.schema_for_version(shard_version)
    except ValueError as error:
        report.add(MANIFEST, str(error))
        shard_version, shards_schema = shard_schema.SCHEMA_VERSION, shard_schema.SCHEMA
    expected = Expected(
        shape=loaded,
        tokenizer_sha256=manifest["tokenizer"]["sha256"],
        shape_fingerprint=manifest["model_shape"]["fingerprint"],
        max_seq_len=manifest.get("max_seq_len"),
        shard_version=shard_version,
    )
    counted = _Counts()
    for entry in manifest["shards"]:
        if _check_file(out, entry, shards_schema, report):
            report.shard_files += 1
            report.shard_rows += _scan_shard(out, entry, expected, counted, report, batch_rows)
    reject_version = manifest.get("schema_versions", {}).get("reject", reject_schema.SCHEMA_VERSION)
    try:
        rejects_schema = reject_schema.schema_for_version(reject_version)
    except ValueError as error:
        report.add(MANIFEST, str(error))
        rejects_schema = reject_schema.SCHEMA
    for entry in manifest["rejects"]:
        if _check_file(out, entry, rejects_schema, report):
            report.reject_files += 1
            report.reject_rows += _scan_rejects(out, entry, counted, report, batch_rows)
    measurements = list((manifest.get("filters") or {}).get("measurements", []))
    for entry in measurements:
        if _check_file(out, entry, MEASUREMENT_SCHEMA, report):
            _scan_measurements(out, entry, counted, report)
    listed = {entry["path"] for entry in manifest["shards"] + manifest["rejects"] + measurements}
    for relative in out.list_files("shards") + out.list_files("rejects") + out.list_files("filters"):
        if relative not in listed:
            report.add(relative, "not listed in the manifest")
    _check_counts(manifest["sources"], counted, report)
    return report


def _check_identity(manifest: Mapping[str, Any], report: Report) -> None:
    """`config_sha256` must be the identity of the recorded config (with, from manifest version 3, the
    tokenizer and shape identities; version 2 hashed the config alone): an edited config or identity would
    make a rerun take another config's output for its own."""
    version = manifest.get("vl2prep_manifest")
    if version is None:
        return  # not written by the pretokenize job (a hand-made output): nothing recorded to check
    config = manifest.get("config")
    if isinstance(version, int) and version >= 3:
        expected = config_identity(
            config, manifest["tokenizer"]["sha256"], manifest["model_shape"]["fingerprint"]
        )
    else:
        expected = hashlib.sha256(canonical_json(config)).hexdigest()
    found = manifest.get("config_sha256")
    if found != expected:
        report.add(MANIFEST, f"config_sha256 {found} is not the identity of the recorded config ({expected})")


@dataclass
class _Counts:
    """Per source, what the files hold: rows (documents, when packed), tokens, rejects by reason."""

    rows: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    image_tokens: Counter = field(default_factory=Counter)
    loss_tokens: Counter = field(default_factory=Counter)
    rejects: dict[str, Counter] = field(default_factory=dict)
    filtered: dict[str, Counter] = field(default_factory=dict)  # reject reason of the dropping filter
    packed: bool = False


def _check_file(out: OutputDir, entry: Mapping[str, Any], schema: pa.Schema, report: Report) -> bool:
    """Size, checksum and schema of one listed file; False when it cannot be read at all."""
    relative = entry["path"]
    if not out.exists(relative):
        report.add(relative, "listed in the manifest but missing")
        return False
    size, sha256 = file_digest(out, relative)
    if size != entry["bytes"]:
        report.add(relative, f"{size} bytes, the manifest says {entry['bytes']}")
    if sha256 != entry["sha256"]:
        report.add(relative, f"sha256 {sha256} differs from the manifest's {entry['sha256']}")
    try:
        with out.fs.open_input_file(out.path(relative)) as handle:
            found = pq.read_schema(handle)
    except (OSError, pa.ArrowException) as error:
        report.add(relative, f"not a readable Parquet file: {error}")
        return False
    if not found.equals(schema):
        report.add(relative, "its schema differs from the documented one")
        return False
    return True


def _scan_shard(
    out: OutputDir,
    entry: Mapping[str, Any],
    expected: Expected,
    counted: _Counts,
    report: Report,
    batch_rows: int,
) -> int:
    relative, rows = entry["path"], 0
    first = last = None
    try:
        for row in iter_rows(out, relative, batch_rows):
            rows += 1
            first = first if first is not None else row["sample_id"]
            last = row["sample_id"]
            if row["source"] != entry["source"]:
                report.add(relative, f"source {row['source']!r} in a file of {entry['source']!r}", last)
            for message in check_row(row, expected):
                report.add(relative, message, last)
            if row["kind"] == "packed":
                counted.packed = True
                for document in row["documents"] or []:
                    counted.rows[document["source"]] += 1
                    counted.tokens[document["source"]] += document["seq_len"]
            else:
                counted.rows[row["source"]] += 1
                counted.tokens[row["source"]] += row["seq_len"]
                counted.image_tokens[row["source"]] += row["num_image_tokens"]
                counted.loss_tokens[row["source"]] += row["num_loss_tokens"]
    except (OSError, pa.ArrowException) as error:
        report.add(relative, f"unreadable after {rows} rows: {error}")
        return rows
    if rows != entry["rows"]:
        report.add(relative, f"{rows} rows, the manifest says {entry['rows']}")
    if (first, last) != (entry["first_sample_id"], entry["last_sample_id"]):
        report.add(relative, f"first/last sample_id {first}/{last} differ from the manifest's")
    return rows


def _scan_rejects(
    out: OutputDir, entry: Mapping[str, Any], counted: _Counts, report: Report, batch_rows: int
) -> int:
    relative, rows = entry["path"], 0
    try:
        for row in iter_rows(out, relative, batch_rows):
            rows += 1
            counted.rejects.setdefault(row["source"], Counter())[row["reason"]] += 1
            if row["reason"] not in reject_schema.REASONS or row["stage"] not in reject_schema.STAGES:
                report.add(relative, f"unknown stage/reason {row['stage']}/{row['reason']}", row["sample_id"])
    except (OSError, pa.ArrowException) as error:
        report.add(relative, f"unreadable after {rows} rows: {error}")
        return rows
    if rows != entry["rows"]:
        report.add(relative, f"{rows} rows, the manifest says {entry['rows']}")
    return rows


def _scan_measurements(out: OutputDir, entry: Mapping[str, Any], counted: _Counts, report: Report) -> None:
    relative = entry["path"]
    try:
        table = pq.read_table(out.path(relative), filesystem=out.fs, columns=["source", "dropped_by"])
    except (OSError, pa.ArrowException) as error:
        report.add(relative, f"unreadable: {error}")
        return
    if table.num_rows != entry["rows"]:
        report.add(relative, f"{table.num_rows} rows, the manifest says {entry['rows']}")
    for source, name in zip(*(table.column(c).to_pylist() for c in ("source", "dropped_by")), strict=True):
        if name is None:
            continue
        if name not in FILTERS:
            report.add(relative, f"unknown filter {name!r} in dropped_by")
            continue
        counted.filtered.setdefault(source, Counter())[FILTERS[name].reason] += 1


def _check_counts(sources: Mapping[str, Mapping[str, Any]], counted: _Counts, report: Report) -> None:
    for name in sorted((set(counted.rows) | set(counted.rejects)) - set(sources)):
        report.add(MANIFEST, f"rows or rejects of source {name!r}, which the manifest does not list")
    for name, totals in sources.items():
        where = f"{MANIFEST} source {name}"
        rejects = counted.rejects.get(name, Counter())
        if totals["read"] != totals["written"] + totals["rejected_total"]:
            report.add(
                where,
                f"read {totals['read']} != written {totals['written']} + rejected {totals['rejected_total']}",
            )
        if totals["rejected_total"] != sum(totals["rejected"].values()):
            report.add(
                where, f"rejected_total {totals['rejected_total']} is not the sum of rejected by reason"
            )
        if dict(rejects) != {reason: n for reason, n in totals["rejected"].items() if n}:
            report.add(
                where,
                f"reject files hold {dict(sorted(rejects.items()))}, the manifest says {totals['rejected']}",
            )
        filtered = counted.filtered.get(name, Counter())
        reasons = {spec.reason for spec in FILTERS.values()}
        if filtered != Counter({r: n for r, n in rejects.items() if r in reasons}):
            report.add(
                where,
                f"filter measurements drop {dict(sorted(filtered.items()))}, the reject files hold "
                f"{ {r: n for r, n in sorted(rejects.items()) if r in reasons} }",
            )
        what = "documents in packed rows" if counted.packed else "rows"
        pairs = [("rows", counted.rows), ("tokens", counted.tokens)]
        if not counted.packed:
            pairs += [("image_tokens", counted.image_tokens), ("loss_tokens", counted.loss_tokens)]
        for key, found in pairs:
            if key in totals and totals[key] != found[name]:
                report.add(where, f"{key} {totals[key]} but the shards' {what} hold {found[name]}")
