"""Reader for text-only corpora (`format: text`): JSON Lines (or a JSON array), plain text or Parquet,
kind `text`.

Each record (a JSON object, or a Parquet row) holds its document in `text_field`, a string (in
Parquet also binary holding UTF-8); the sample is one text segment with the text exactly as stored.
Files ending in `.parquet` are read as Parquet in record batches; files ending in `.txt` as plain UTF-8
text (`text_format`: `lines`, one document per line that is not blank, without its line ending;
`document`, the whole file one document);
anything else as JSON records (`streams.json_records`: a `.jsonl` file is always JSON Lines, and so
is a `.json` file that does not start with `[`, as Dolma and C4 name theirs). JSON and text files may
be compressed (`.jsonl.gz`, `.json.zst`, `.txt.xz`, ...) or in a `.zip`, read as streams. A line, an
array element or a `document` file over `max_record_bytes` is rejected as `record_too_large` unread.
`meta_fields` (JSON fields or Parquet columns) are copied into meta when present. A record that is not
a JSON object is `malformed_record`; a Parquet file without the text column (`missing_field`) or with
one that is neither string nor binary (`bad_field`) rejects each of its rows on its own.

Key: `<file relative to the source root>#<record index>` (0-based; blank lines are not records).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from pipeline.ingest.base import Format, Options, Row, SourceConfig, option, split_compression
from pipeline.ingest.checks import (
    Rejected,
    check_text,
    record_rows,
    sample_row,
    text_segment,
)
from pipeline.ingest.containers import split_member
from pipeline.ingest.streams import (
    LostRows,
    column_values,
    is_bytes_type,
    is_text_type,
    json_records,
    parquet_batches,
    text_records,
)

__all__ = ["FORMAT", "TextOptions", "read_file"]


@dataclass(frozen=True)
class TextOptions(Options):
    """Options of `format: text`."""

    text_field: str = option("text", "JSON field or Parquet column with the document text")
    meta_fields: tuple[str, ...] = option(
        (), "JSON fields or Parquet columns copied into each sample's meta (those present)"
    )
    text_format: str = option(
        "lines",
        "how a .txt file holds its documents: lines (one per line that is not blank) or document (the "
        "whole file is one)",
        choices=("lines", "document"),
    )


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    options = config.options
    assert isinstance(options, TextOptions)
    name = split_compression(split_member(file)[1] or file)[0]
    if file.endswith(".parquet"):
        records = _parquet_records(config, file)
    elif name.endswith(".txt"):
        lines = text_records(
            config.root, file, options.max_record_bytes, whole=options.text_format == "document"
        )
        records = (
            (index, text if isinstance(text, Rejected) else {options.text_field: text})
            for index, text in lines
        )
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
    suffixes=(".jsonl", ".json", ".txt", ".parquet"),
    uses_images_root=False,
    read_file=read_file,
    streamed=(".jsonl", ".json", ".txt"),
)
