"""Record streams shared by the readers: JSON Lines, streamed JSON arrays, Parquet in record batches,
and whole JSON documents.

The streams read one input file with bounded memory (a record or a batch at a time, never the whole
file); `json_document` is for formats published as one JSON object (COCO, TextOCR, REFER), which cannot
be read a record at a time. Sizes are checked before bytes are kept: a JSON Lines line or a JSON array
element over `max_record_bytes` becomes a `record_too_large` reject in place of its record and is
skipped in chunks; reading goes on after it. A JSON array is parsed in time linear in its length,
however large one element is. A Parquet row that cannot be read is rejected on its own: every row the
footer declares is accounted for. All raise `FileUnreadable` when the file, or the rest of it, cannot
be read: the reader turns that into one reject row keyed by the file, after the rows of the records it
did read.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ingest.base import Options, open_input, split_compression
from pipeline.ingest.checks import FileUnreadable, Rejected
from pipeline.ingest.containers import STREAM_ERRORS, open_stream, split_member

__all__ = [
    "MAX_ROWS_PER_BYTE",
    "PARQUET_BATCH_ROWS",
    "LostRows",
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
    "text_records",
]

PARQUET_BATCH_ROWS = 64
"""Rows per Parquet record batch: small, because image columns make rows large."""

MAX_ROWS_PER_BYTE = 8
"""Rows a Parquet file is trusted to hold per byte of its size when rows it declares cannot be read
(real corpus rows take bytes; a count beyond this is corrupt or hostile)."""

_CHUNK_CHARACTERS = 1 << 20
_CHUNK_BYTES = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BOM = "\ufeff"
_DECODER = json.JSONDecoder()
_LONGEST_CUT_TOKEN = 16
"""Characters from the end of the text within which a decoding error may come from a token cut short
(a literal such as -Infinity, a number's exponent, a \\uXXXX\\uXXXX escape pair)."""
_SCALAR = re.compile(r'[^\s,\[\]{}"]*')
"""A scalar element (number, literal) up to whatever ends it."""
# In a skipped element: the rest of a string up to its closing quote (escapes crossed); each complete
# string (group 1 empty), bracket, or quote opening a string that the text read does not close.
_INSIDE_STRING = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|([\[\]{}"])', re.DOTALL)
_OPENING, _CLOSING = ("[", "{"), ("]", "}")
_BRACKET_STEP = np.zeros(256, np.int64)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def read_whole(location: str, file: str) -> bytes:
    """All the bytes of `file`, decompressed when its name ends with a compression suffix (a source
    `path` may name one compressed document, `captions.json.gz`)."""
    try:
        with open_stream(location, file) as stream:
            return stream.read()
    except STREAM_ERRORS as error:
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


def json_records(
    location: str, file: str, max_record_bytes: int = Options.max_record_bytes
) -> Iterator[tuple[int, object]]:
    """(record index, record) for every record of a JSON file. A file whose name ends in `.jsonl` is JSON
    Lines whatever its first line holds; any other file is a JSON array of records when its first
    character that is not blank is `[`, else JSON Lines too. Blank lines are not records. A compressed
    file or a `.zip` member is read through `containers.open_stream`, by the name under its
    compression suffix (`a.jsonl.gz` is JSON Lines).

    Text is decoded as UTF-8 with `surrogateescape`: undecodable bytes inside a string survive as lone
    surrogates, for `checks.check_text` to reject as `bad_text`. In place of a record, a `Rejected` comes:
    `record_too_large` for a line or an array element of more than `max_record_bytes` bytes, which is
    skipped in chunks, never held whole; `malformed_record` for a line that does not parse, or an array
    element that is structurally sound but cannot be decoded (nested too deeply, an integer too long).
    Reading goes on after either. A JSON array that breaks cannot be resynchronized, so it raises
    `FileUnreadable` for the rest.
    """
    name = split_compression(split_member(file)[1] or file)[0]
    index = 0
    try:
        with open_stream(location, file) as stream, io.BufferedReader(stream, _CHUNK_BYTES) as binary:
            if not name.endswith(".jsonl"):
                start = binary.peek(4096).decode("utf-8", "surrogateescape").lstrip(_BOM + " \t\r\n")
                if start.startswith("["):
                    text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape")
                    for record in _json_array(text, max_record_bytes=max_record_bytes):
                        yield index, record
                        index += 1
                    return
            for record in _json_lines(binary, max_record_bytes):
                yield index, record
                index += 1
    except STREAM_ERRORS as error:
        raise FileUnreadable(f"records from {index} on cannot be read: {error}") from None


def _json_lines(binary: io.BufferedReader, max_record_bytes: int) -> Iterator[object]:
    """The records of JSON Lines (blank lines skipped), each line read only when it is short enough."""
    for line_number, line in _lines(binary, max_record_bytes):
        if isinstance(line, Rejected):
            yield line
            continue
        try:
            yield json.loads(line)
        except (ValueError, RecursionError) as error:
            yield Rejected("read", "malformed_record", f"line {line_number} is not JSON: {error}")


def _lines(binary: io.BufferedReader, max_record_bytes: int) -> Iterator[tuple[int, str | Rejected]]:
    """(line number, the line decoded without its line ending) for each line that is not blank, each read
    only when it is short enough (else a `record_too_large` `Rejected`, the line skipped unread)."""
    line_number = 0
    while line := binary.readline(max_record_bytes + 1):
        line_number += 1
        if len(line) > max_record_bytes and not line.endswith(b"\n"):
            size = len(line) + _skip_line(binary)
            detail = f"line {line_number} has {size} bytes, over max_record_bytes {max_record_bytes}"
            detail += "; skipped unread"
            yield line_number, Rejected("read", "record_too_large", detail)
            continue
        decoded = line.decode("utf-8", "surrogateescape")
        if line_number == 1:
            decoded = decoded.removeprefix(_BOM)
        if decoded.strip():
            yield line_number, decoded.removesuffix("\n").removesuffix("\r")


def text_records(
    location: str, file: str, max_record_bytes: int = Options.max_record_bytes, *, whole: bool = False
) -> Iterator[tuple[int, str | Rejected]]:
    """(record index, text) for the records of a plain UTF-8 text file (compressed or a `.zip` member
    too, through `containers.open_stream`): each line that is not blank, without its line ending (blank
    lines are not records), or with `whole` the file's whole text as one record. Text is decoded with
    `surrogateescape`, as JSON is; a leading byte-order mark is dropped. A line or a whole file of more
    than `max_record_bytes` bytes comes as a `record_too_large` `Rejected`, never held whole."""
    index = 0
    try:
        with open_stream(location, file) as stream, io.BufferedReader(stream, _CHUNK_BYTES) as binary:
            if whole:
                data = binary.read(max_record_bytes + 1)
                if len(data) > max_record_bytes:
                    size = len(data)
                    while piece := binary.read(_CHUNK_BYTES):
                        size += len(piece)
                    detail = f"the file has {size} bytes, over max_record_bytes {max_record_bytes}; not kept"
                    yield 0, Rejected("read", "record_too_large", detail)
                else:
                    yield 0, data.decode("utf-8", "surrogateescape").removeprefix(_BOM)
                return
            for _, line in _lines(binary, max_record_bytes):
                yield index, line
                index += 1
    except STREAM_ERRORS as error:
        raise FileUnreadable(f"records from {index} on cannot be read: {error}") from None


def _skip_line(binary: io.BufferedReader) -> int:
    """Read past the rest of the current line, a chunk at a time; the bytes skipped, newline excluded."""
    skipped = 0
    while piece := binary.readline(_CHUNK_BYTES):
        if piece.endswith(b"\n"):
            return skipped + len(piece) - 1
        skipped += len(piece)
    return skipped


def _json_array(
    text: io.TextIOBase,
    chunk_characters: int = _CHUNK_CHARACTERS,
    max_record_bytes: int = Options.max_record_bytes,
) -> Iterator[object]:
    """The elements of a JSON array read from `text` one at a time, in chunks of `chunk_characters`; an
    element of more than `max_record_bytes` bytes comes as a `Rejected` (see `json_records`)."""
    return _ArrayReader(text, chunk_characters, max_record_bytes).elements()


class _ArrayReader:
    """A JSON array parsed from a text stream in time linear in its length.

    `data[position:]` is the text not parsed yet and `pending` the chunks read after it. An element is
    decoded (by `json`'s C decoder) from its first character; when the text ends inside it, chunks are
    read until the text buffered for it has doubled (or exceeds the limit) before the next try, and only
    then joined, so each character is copied and scanned a bounded number of times however large the
    element. An element that exceeds the limit, or that the decoder cannot take, is skipped by a scan of
    its strings and brackets chunk by chunk, without keeping it.
    """

    def __init__(self, text: io.TextIOBase, chunk_characters: int, max_record_bytes: int) -> None:
        self.text = text
        self.chunk_characters = chunk_characters
        self.limit = max_record_bytes
        self.data = ""
        self.position = 0
        self.pending: list[str] = []
        self.pending_size = 0
        self.at_end = False

    def elements(self) -> Iterator[object]:
        """Each element in order (or a `Rejected` in its place); `FileUnreadable` where the array breaks."""
        if self.next_character() == _BOM:
            self.position += 1
        if self.next_character() != "[":
            raise FileUnreadable("not a JSON array")
        self.position += 1
        index = 0
        if self.next_character() == "]":
            self.position += 1
        else:
            while True:
                self.next_character()
                yield self.element(index)
                index += 1
                separator = self.next_character()
                if separator == "]":
                    self.position += 1
                    break
                if separator != ",":
                    raise FileUnreadable(
                        f"records after {index - 1}: expected ',' or ']' after a record, found {separator!r}"
                    )
                self.position += 1
        if self.next_character():
            raise FileUnreadable(f"data after the end of the array (after {index} records)")

    def read_chunk(self) -> bool:
        """Read one more chunk into `pending`; False at the end of the input."""
        chunk = "" if self.at_end else self.text.read(self.chunk_characters)
        if not chunk:
            self.at_end = True
            return False
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        return True

    def join(self) -> None:
        """Make `data` the unparsed text and the pending chunks, from `position` 0."""
        if self.pending:
            self.data = "".join([self.data[self.position :], *self.pending])
            self.position, self.pending, self.pending_size = 0, [], 0

    def next_character(self) -> str:
        """The first character at or after `position` that is not blank ('' at the end of input)."""
        while True:
            self.position = _WHITESPACE.match(self.data, self.position).end()
            if self.position < len(self.data):
                return self.data[self.position]
            if not self.pending and not self.read_chunk():
                return ""
            self.join()

    def element(self, index: int) -> object:
        """The element starting at `position` (or a `Rejected` in its place), with `position` after it."""
        while True:
            self.join()
            start = self.position
            try:
                record, end = _DECODER.raw_decode(self.data, start)
            except json.JSONDecodeError as error:
                if self.at_end or not _cut_short(error, len(self.data)):
                    raise FileUnreadable(f"record {index} and after: not valid JSON: {error}") from None
                size = len(self.data) - start  # the text ends inside the element
            except (ValueError, RecursionError) as error:  # more text cannot make it decodable
                detail = f"record {index} cannot be decoded: {type(error).__name__}: {error}"
                return self.skip(index, Rejected("read", "malformed_record", detail))
            else:
                if self.at_end or self.complete(end):
                    self.position = end
                    return self.checked(index, record, start, end)
                size = end - start  # a number that may go on in the next chunk
            if size > self.limit:  # characters: at least as many bytes
                detail = f"record {index} has more than max_record_bytes {self.limit} bytes; skipped unread"
                return self.skip(index, Rejected("read", "record_too_large", detail))
            buffered = len(self.data) - start
            wanted = max(min(2 * buffered, self.limit + 1), buffered + 1)
            while self.available() < wanted and self.read_chunk():
                pass

    def complete(self, end: int) -> bool:
        """Whether an element decoded up to `end` cannot go on in the text not read yet: blank space or a
        separator follows it, or a character too far from the end of the text read to be part of a
        token cut short (the array is broken there, as the separator check then says)."""
        if end == len(self.data):
            return False
        return self.data[end] in " \t\n\r,]" or end < len(self.data) - _LONGEST_CUT_TOKEN

    def available(self) -> int:
        return len(self.data) - self.position + self.pending_size

    def checked(self, index: int, record: object, start: int, end: int) -> object:
        """`record`, or `record_too_large` when its text `data[start:end]` is over the limit in UTF-8."""
        size = end - start
        if size * 4 > self.limit:  # a character is at most 4 bytes: only then can it be over the limit
            size = len(self.data[start:end].encode("utf-8", "surrogatepass"))
        if size <= self.limit:
            return record
        detail = f"record {index} has {size} bytes, over max_record_bytes {self.limit}"
        return Rejected("read", "record_too_large", detail)

    def skip(self, index: int, rejected: Rejected) -> Rejected:
        """Move `position` past the element starting there, reading on without keeping what is read;
        returns `rejected`."""
        self.join()
        data, at = self.data, self.position
        scalar = data[at] not in '"[{'
        state = _ScanState()
        if data[at] == '"':
            state.in_string, at = True, at + 1
        while True:
            if scalar:
                at = _SCALAR.match(data, at).end()
                end = at if at < len(data) else None
            else:  # a window at a time, so that what the scan builds stays as small as a chunk
                window = data[at : at + self.chunk_characters]
                found = _element_end(window, state)
                end = None if found is None else at + found
                at += len(window)
            if end is not None:
                self.data, self.position = data, end
                return rejected
            if at < len(data):
                continue
            data, at = ("" if self.at_end else self.text.read(self.chunk_characters)), 0
            if not data:
                raise FileUnreadable(f"record {index} and after: the input ends inside record {index}")


@dataclass
class _ScanState:
    """Where the scan of a skipped element stands between windows: the bracket depth, whether it is
    inside a string, and whether the next character is escaped (an odd run of backslashes ended the
    window inside a string)."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False


def _element_end(window: str, state: _ScanState) -> int | None:
    """The characters of `window` up to the end of the skipped element (a string, array or object) whose
    scan `state` continues, or None when it does not end in the window (`state` is then where it stands).

    Everything runs over whole stretches in C: a regular expression crosses strings and picks out the
    brackets between them, numpy sums their running depth, and only the stretch where the depth
    returns to 0 is walked token by token.
    """
    position = 0
    if state.in_string:
        position = _string_end(window, position, state)
        if position is None:
            return None
        if state.depth == 0:
            return position
    tokens = "".join(_STRING_OR_BRACKET.findall(window, position))
    cut = tokens.find('"')  # a string that the window does not close: what follows is inside it
    brackets = tokens if cut < 0 else tokens[:cut]
    if brackets:
        depths = state.depth + np.cumsum(_BRACKET_STEP[np.frombuffer(brackets.encode("ascii"), np.uint8)])
        if not depths.all():  # the element ends in this stretch: find where
            for match in _STRING_OR_BRACKET.finditer(window, position):
                token = match.group(1)
                if token in _OPENING or token in _CLOSING:
                    state.depth += 1 if token in _OPENING else -1
                    if state.depth == 0:
                        return match.end()
        state.depth = int(depths[-1])
    if cut >= 0:
        state.in_string = True
        _string_end(window, _opening_quote(window, position) + 1, state)
    return None


def _string_end(window: str, position: int, state: _ScanState) -> int | None:
    """The index after the quote that closes the string `position` is inside of (`state` then outside
    it), or None when the string goes on past the window (`state.escaped` then says whether the window
    ended in an escaping backslash)."""
    if state.escaped:
        if position == len(window):
            return None
        position, state.escaped = position + 1, False
    stop = _INSIDE_STRING.match(window, position).end()
    if stop == len(window):
        return None
    if window[stop] == "\\":  # the last character: it escapes the first of the next window
        state.escaped = True
        return None
    state.in_string = False
    return stop + 1


def _opening_quote(window: str, position: int) -> int:
    """The index of the last quote of `window` from `position` on that no backslash escapes: in JSON,
    that of the string left open (`position - 1` if there is none, as only broken JSON can have)."""
    end = len(window)
    while True:
        quote = start = window.rfind('"', position, end)
        if quote < 0:
            return position - 1
        while start > position and window[start - 1] == "\\":
            start -= 1
        if (quote - start) % 2 == 0:
            return quote
        end = start


def _cut_short(error: json.JSONDecodeError, length: int) -> bool:
    """Whether a decoding error may only say that the text ends inside the element (a string, or a
    token at the very end), so that reading on may complete it."""
    return error.msg.startswith("Unterminated string") or error.pos >= length - _LONGEST_CUT_TOKEN


@dataclass(frozen=True)
class LostRows:
    """`count` consecutive rows of a Parquet file that cannot become records, each rejected for one
    reason (a missing or unusable column, data that cannot be decoded)."""

    count: int
    rejected: Rejected

    def records(self, start: int) -> Iterator[tuple[int, Rejected]]:
        """(row index, its own `Rejected`) for each lost row, the first being row `start`."""
        stage, reason, detail = self.rejected.stage, self.rejected.reason, self.rejected.detail
        for index in range(start, start + self.count):
            yield index, Rejected(stage, reason, detail)


def table_records(
    location: str, file: str, columns: list[str], max_record_bytes: int = Options.max_record_bytes
) -> Iterator[tuple[int, object]]:
    """(record index, record) of a file of row records: a Parquet file (name ending in `.parquet`) row
    by row, each row a dict of all its columns (`columns` are required, as in `parquet_batches`; a row
    holding undecodable text, or a lost row, comes as a `Rejected` in its place), else `json_records`."""
    if not file.endswith(".parquet"):
        yield from json_records(location, file, max_record_bytes)
        return
    for start, batch in parquet_batches(location, file, columns, None):
        if isinstance(batch, LostRows):
            yield from batch.records(start)
            continue
        values = {name: column_values(batch.column(name), name) for name in batch.schema.names}
        for offset in range(batch.num_rows):
            row = {name: column[offset] for name, column in values.items()}
            bad = next((value for value in row.values() if isinstance(value, Rejected)), None)
            yield start + offset, bad if bad is not None else row


def parquet_batches(
    location: str,
    file: str,
    columns: list[str],
    optional: tuple[str, ...] | None = (),
    usable: Callable[[pa.Schema], Rejected | None] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch | LostRows]]:
    """(index of the first row, batch) over the `columns` of a Parquet file, and those of the `optional`
    columns that it has (None: all its other columns), in row order, row group by row group; pages are
    read as they are decoded, so memory holds a batch, never a whole column chunk.

    Every row the footer declares comes once, in a batch or in `LostRows`: all of them when one of
    `columns` is absent (`missing_field`) or when `usable` (given the schema of the columns read) says
    why the file's types cannot be used; the rest of a row group that fails to decode
    (`unreadable_file`). `FileUnreadable` when the file cannot be opened as Parquet at all, or when rows
    would be lost whose count the footer puts above `MAX_ROWS_PER_BYTE` per byte of the file (a corrupt
    or hostile count, not to be expanded into that many rejects).
    """
    try:
        source = open_input(location, file, random_access=True)
    except (OSError, pa.ArrowException) as error:
        raise FileUnreadable(f"cannot open: {error}") from None
    with source:
        parquet = None
        try:
            parquet = pq.ParquetFile(source, buffer_size=_CHUNK_BYTES, pre_buffer=False)
            schema = parquet.schema_arrow
        except (OSError, pa.ArrowException, ValueError, TypeError) as error:
            declared = "" if parquet is None else f" (its footer declares {parquet.metadata.num_rows} rows)"
            raise FileUnreadable(f"not a readable Parquet file{declared}: {error}") from None
        names, total = schema.names, parquet.metadata.num_rows
        plausible = MAX_ROWS_PER_BYTE * source.size()
        missing = [name for name in columns if name not in names]
        if missing:
            detail = f"the file has no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})"
            yield 0, _lost(total, plausible, Rejected("read", "missing_field", detail))
            return
        wanted = names if optional is None else optional
        selected = list(dict.fromkeys([*columns, *(name for name in wanted if name in names)]))
        problem = None if usable is None else usable(pa.schema([schema.field(name) for name in selected]))
        if problem is not None:
            yield 0, _lost(total, plausible, problem)
            return
        start = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            done = 0
            failure = None
            try:
                for batch in parquet.iter_batches(
                    batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=selected, use_threads=False
                ):
                    yield start + done, batch
                    done += batch.num_rows
            except (OSError, pa.ArrowException, ValueError, TypeError, IndexError) as error:
                failure = f"cannot be decoded: {error}"
            if done < rows:
                failure = failure or f"are missing: the row group declares {rows} rows and holds {done}"
                detail = f"rows {start + done} to {start + rows - 1} (row group {group}) {failure}"
                yield start + done, _lost(rows - done, plausible, Rejected("read", "unreadable_file", detail))
            start += rows


def _lost(count: int, plausible: int, rejected: Rejected) -> LostRows:
    if count > plausible:
        raise FileUnreadable(
            f"{rejected.detail}; the footer declares {count} such rows, more than the file can hold, "
            "so they are not counted one by one",
            reason=rejected.reason,
        )
    return LostRows(count, rejected)


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
