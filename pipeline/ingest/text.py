"""Reader for text-only corpora (`format: text`): JSON Lines (or a JSON array) or Parquet, kind `text`.

Each record (a JSON object, or a Parquet row) holds its document in `text_field`, a string (in
Parquet also binary holding UTF-8); the sample is one text segment with the text exactly as stored.
Files ending in `.parquet` are read as Parquet in record batches, anything else as JSON records
(`streams.json_records`: a `.jsonl` file is always JSON Lines; a line or array element over
`max_record_bytes` is rejected as `record_too_large` unread). `meta_fields` (JSON fields or Parquet
columns) are copied into meta when present. A record that is not a JSON object is `malformed_record`;
a Parquet file without the text column (`missing_field`) or with one that is neither string nor binary
(`bad_field`) rejects each of its rows on its own.

Key: `<file relative to the source root>#<record index>` (0-based; blank lines are not records).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from pipeline.ingest.base import Format, Options, Row, SourceConfig, option
from pipeline.ingest.checks import (
    Rejected,
    check_text,
    record_rows,
    sample_row,
    text_segment,
)
from pipeline.ingest.streams import (
    LostRows,
    column_values,
    is_bytes_type,
    is_text_type,
    json_records,
    parquet_batches,
)

__all__ = ["FORMAT", "TextOptions", "read_file"]


@dataclass(frozen=True)
class TextOptions(Options):
    """Options of `format: text`."""

    text_field: str = option("text", "JSON field or Parquet column with the document text")
    meta_fields: tuple[str, ...] = option(
        (), "JSON fields or Parquet columns copied into each sample's meta (those present)"
    )


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    if file.endswith(".parquet"):
        records = _parquet_records(config, file)
    else:
        records = json_records(config.root, file, config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _parquet_records(config: SourceConfig, file: str) -> Iterator[tuple[int, dict | Rejected]]:
    options = config.options
    assert isinstance(options, TextOptions)

    def usable(schema: pa.Schema) -> Rejected | None:
        text_type = schema.field(options.text_field).type
        if is_text_type(text_type) or is_bytes_type(text_type):
            return None
        detail = f"column {options.text_field!r} has type {text_type}, not string or binary"
        return Rejected("read", "bad_field", detail)

    batches = parquet_batches(config.root, file, [options.text_field], options.meta_fields, usable)
    for start, batch in batches:
        if isinstance(batch, LostRows):
            yield from batch.records(start)
            continue
        values = {name: column_values(batch.column(name), name) for name in batch.schema.names}
        for offset in range(batch.num_rows):
            yield start + offset, {name: column[offset] for name, column in values.items()}


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, TextOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a record must be an object, not {record!r:.80}")
    text = check_text(record.get(options.text_field), options.text_field)
    meta = {name: record[name] for name in options.meta_fields if name in record}
    for value in meta.values():
        if isinstance(value, Rejected):
            raise value
    return sample_row(config, key, "text", [text_segment(text)], meta=meta)


FORMAT = Format(
    name="text",
    options=TextOptions,
    suffixes=(".jsonl", ".parquet"),
    uses_images_root=False,
    read_file=read_file,
)
