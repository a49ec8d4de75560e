"""Record streams shared by the readers: JSON Lines, streamed JSON arrays, Parquet in record batches,
and whole JSON documents.

The streams read one input file with bounded memory (a record or a batch at a time, never the whole
file); `json_document` is for formats published as one JSON object (COCO, TextOCR, REFER), which cannot
be read a record at a time. All raise `FileUnreadable` when the file, or the rest of it, cannot be read:
the reader turns that into one reject row keyed by the file, after the rows of the records it did read.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ingest.base import open_input
from pipeline.ingest.checks import FileUnreadable, Rejected

__all__ = [
    "PARQUET_BATCH_ROWS",
    "column_values",
    "is_bytes_type",
    "is_text_type",
    "json_document",
    "json_object",
    "json_records",
    "parquet_batches",
    "parse_json",
    "read_whole",
    "table_records",
]

PARQUET_BATCH_ROWS = 64
"""Rows per Parquet record batch: small, because image columns make rows large."""

_CHUNK_CHARACTERS = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BOM = "\ufeff"


def read_whole(location: str, file: str) -> bytes:
    """All the bytes of `file`."""
    try:
        with open_input(location, file) as stream:
            return stream.read()
    except (OSError, pa.ArrowException) as error:
        raise FileUnreadable(f"cannot read: {error}") from None


def parse_json(data: bytes) -> object:
    """The JSON value `data` holds (UTF-8, a leading byte-order mark allowed)."""
    try:
        return json.loads(data.decode("utf-8", "surrogateescape").removeprefix(_BOM))
    except (ValueError, RecursionError) as error:
        raise FileUnreadable(f"not valid JSON: {error}") from None


def json_document(location: str, file: str) -> object:
    """The JSON value that the whole of `file` holds."""
    return parse_json(read_whole(location, file))


def json_object(location: str, file: str) -> dict:
    """The JSON object that the whole of `file` holds."""
    document = json_document(location, file)
    if not isinstance(document, dict):
        raise FileUnreadable("not a JSON object")
    return document


def json_records(location: str, file: str) -> Iterator[tuple[int, object]]:
    """(record index, record) for every record of a JSON file: a JSON array of records when the first
    character that is not blank is `[`, else JSON Lines (blank lines are not records).

    Text is decoded as UTF-8 with `surrogateescape`: undecodable bytes inside a string survive as lone
    surrogates, for `checks.check_text` to reject as `bad_text`. A JSON Lines record that does not
    parse comes as a `Rejected` (`malformed_record`) in place of the record, and the file goes on; a
    JSON array that breaks cannot be resynchronized, so it raises `FileUnreadable` for the rest.
    """
    try:
        stream = open_input(location, file)
    except (OSError, pa.ArrowException) as error:
        raise FileUnreadable(f"cannot open: {error}") from None
    index = 0
    try:
        with stream, io.BufferedReader(stream, buffer_size=1 << 20) as binary:
            start = binary.peek(4096).decode("utf-8", "surrogateescape").lstrip(_BOM + " \t\r\n")
            if start.startswith("["):
                text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape")
                for record in _json_array(text):
                    yield index, record
                    index += 1
                return
            for line_number, line in enumerate(binary, start=1):
                decoded = line.decode("utf-8", "surrogateescape")
                if line_number == 1:
                    decoded = decoded.removeprefix(_BOM)
                if not decoded.strip():
                    continue
                try:
                    record: object = json.loads(decoded)
                except (ValueError, RecursionError) as error:
                    record = Rejected("read", "malformed_record", f"line {line_number} is not JSON: {error}")
                yield index, record
                index += 1
    except (OSError, pa.ArrowException) as error:
        raise FileUnreadable(f"records from {index} on cannot be read: {error}") from None


def _json_array(text: io.TextIOBase, chunk_characters: int = _CHUNK_CHARACTERS) -> Iterator[object]:
    """The elements of a JSON array read from `text` one at a time, in chunks of `chunk_characters`."""
    decoder = json.JSONDecoder()
    buffer, position, at_end = "", 0, False

    def read_more() -> bool:
        nonlocal buffer, position, at_end
        chunk = "" if at_end else text.read(chunk_characters)
        if not chunk:
            at_end = True
            return False
        buffer, position = buffer[position:] + chunk, 0
        return True

    def next_character() -> str:
        """The first character at or after `position` that is not blank ('' at the end of input)."""
        nonlocal position
        while True:
            position = _WHITESPACE.match(buffer, position).end()
            if position < len(buffer):
                return buffer[position]
            if not read_more():
                return ""

    if next_character() == _BOM:
        position += 1
    if next_character() != "[":
        raise FileUnreadable("not a JSON array")
    position += 1
    index = 0
    if next_character() == "]":
        position += 1
    else:
        while True:
            next_character()
            while True:  # decode one element; it is complete once the "," or "]" after it is seen
                try:
                    record, end = decoder.raw_decode(buffer, position)
                    follower = _WHITESPACE.match(buffer, end).end()
                    if at_end or (follower < len(buffer) and buffer[follower] in ",]"):
                        break
                except (ValueError, RecursionError) as error:
                    if at_end:
                        raise FileUnreadable(f"record {index} and after: not valid JSON: {error}") from None
                read_more()
            position = end
            yield record
            index += 1
            separator = next_character()
            if separator == "]":
                position += 1
                break
            if separator != ",":
                raise FileUnreadable(
                    f"records after {index - 1}: expected ',' or ']' after a record, found {separator!r}"
                )
            position += 1
    if next_character():
        raise FileUnreadable(f"data after the end of the array (after {index} records)")


def table_records(location: str, file: str, columns: list[str]) -> Iterator[tuple[int, object]]:
    """(record index, record) of a file of row records: a Parquet file (name ending in `.parquet`) row
    by row, each row a dict of all its columns (`columns` are required, as in `parquet_batches`; a row
    holding undecodable text comes as that `Rejected` in its place), else `json_records`."""
    if not file.endswith(".parquet"):
        yield from json_records(location, file)
        return
    for start, batch in parquet_batches(location, file, columns, None):
        values = {name: column_values(batch.column(name), name) for name in batch.schema.names}
        for offset in range(batch.num_rows):
            row = {name: column[offset] for name, column in values.items()}
            bad = next((value for value in row.values() if isinstance(value, Rejected)), None)
            yield start + offset, bad if bad is not None else row


def parquet_batches(
    location: str, file: str, columns: list[str], optional: tuple[str, ...] | None = ()
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(index of the batch's first row, batch) over the `columns` of a Parquet file, and those of the
    `optional` columns that it has (None: all its other columns), in row order.

    `FileUnreadable`: `unreadable_file` when the file is not Parquet or a batch fails to decode (the
    detail names the rows lost), `missing_field` when one of `columns` is absent.
    """
    try:
        source = open_input(location, file, random_access=True)
    except (OSError, pa.ArrowException) as error:
        raise FileUnreadable(f"cannot open: {error}") from None
    with source:
        try:
            parquet = pq.ParquetFile(source)
            names = parquet.schema_arrow.names
            total = parquet.metadata.num_rows
        except (OSError, pa.ArrowException, ValueError, TypeError) as error:
            raise FileUnreadable(f"not a readable Parquet file: {error}") from None
        missing = [name for name in columns if name not in names]
        if missing:
            raise FileUnreadable(
                f"no column {', '.join(map(repr, missing))} (columns: {', '.join(names)}); all {total} rows",
                reason="missing_field",
            )
        start = 0
        try:
            wanted = names if optional is None else optional
            selected = list(dict.fromkeys([*columns, *(name for name in wanted if name in names)]))
            for batch in parquet.iter_batches(
                batch_size=PARQUET_BATCH_ROWS, columns=selected, use_threads=False
            ):
                yield start, batch
                start += batch.num_rows
        except (OSError, pa.ArrowException, ValueError, TypeError, IndexError) as error:
            raise FileUnreadable(f"rows {start} to {total - 1} cannot be read: {error}") from None


def is_bytes_type(data_type: pa.DataType) -> bool:
    """Whether an Arrow type holds bytes (binary, large or view)."""
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_binary_view(data_type)
    )


def is_text_type(data_type: pa.DataType) -> bool:
    """Whether an Arrow type holds strings (string, large or view)."""
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def column_values(array: pa.Array, name: str) -> list:
    """The values of the column `name` as Python objects, without failing on invalid UTF-8 (Parquet
    files need not validate it): strings are decoded with `surrogateescape`, as JSON text is, for the
    text checks to reject; structs are converted field by field; an element of any other type that
    cannot be converted becomes a `Rejected` (`bad_text`) in its place, for the reader to raise."""
    data_type = array.type
    if is_text_type(data_type):
        if pa.types.is_string_view(data_type):
            binary_type = pa.binary_view()
        else:
            binary_type = pa.large_binary() if pa.types.is_large_string(data_type) else pa.binary()
        return [
            None if v is None else v.decode("utf-8", "surrogateescape")
            for v in array.cast(binary_type).to_pylist()
        ]
    if pa.types.is_struct(data_type):
        fields = {
            data_type.field(i).name: column_values(child, f"{name}.{data_type.field(i).name}")
            for i, child in enumerate(array.flatten())
        }
        valid = array.is_valid().to_pylist()
        return [
            {field: values[row] for field, values in fields.items()} if valid[row] else None
            for row in range(len(array))
        ]
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        return [_element(array, row, name) for row in range(len(array))]


def _element(array: pa.Array, row: int, name: str) -> object:
    try:
        return array[row].as_py()
    except UnicodeDecodeError as error:
        return Rejected("sample", "bad_text", f"column {name!r} holds text that is not valid UTF-8: {error}")
