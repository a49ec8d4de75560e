"""pipeline.ingest.streams: JSON Lines and JSON arrays read record by record, every record bounded by
max_record_bytes before it is held, arrays parsed in linear time, Parquet read page by page."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import read_source, reader, reasons, write
from memory_support import PEAK, read_in_subprocess

from pipeline import ingest
from pipeline.ingest import ConfigError, streams
from pipeline.ingest.checks import FileUnreadable, Rejected

TOO_LARGE = "record_too_large"


def plain(records: object) -> list:
    """Records with each `Rejected` replaced by its reason, for comparison."""
    return [record.reason if isinstance(record, Rejected) else record for record in records]


def json_records(folder: Path, file: str, **options: int) -> list:
    return plain(record for _, record in streams.json_records(str(folder), file, **options))


# ---- JSON Lines ---------------------------------------------------------------------------------------


def test_a_jsonl_file_is_read_line_by_line_whatever_its_first_line_holds(tmp_path: Path):
    lines = ["[1, 2]", *(json.dumps({"text": f"record {i}"}) for i in range(1000))]
    write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    records = list(streams.json_records(str(tmp_path), "a.jsonl"))
    assert len(records) == 1001
    assert records[0] == (0, [1, 2])
    assert records[1000] == (1000, {"text": "record 999"})
    # Any other name is still told apart by its first character: this one is a broken array.
    write(tmp_path / "a.json", "\n".join(lines) + "\n")
    with pytest.raises(FileUnreadable, match=r"data after the end of the array \(after 2 records\)"):
        list(streams.json_records(str(tmp_path), "a.json"))


def line(size: int) -> str:
    """A JSON object of exactly `size` bytes."""
    return '{"t": "' + "x" * (size - 9) + '"}'


def test_lines_over_the_limit_are_rejected_and_reading_goes_on(tmp_path: Path):
    limit = 16
    long = line(3 << 20)  # several reading chunks long
    # The last line has no newline; a carriage return counts as a byte of its line.
    data = "\n".join([line(16), line(17), line(15) + "\r", "", long, line(16), line(17)]).encode()
    write(tmp_path / "a.jsonl", b"\xef\xbb\xbf" + data)  # the byte-order mark counts in the first line
    fits, over, crlf = {"t": "x" * 7}, {"t": "x" * 8}, {"t": "x" * 6}
    got = json_records(tmp_path, "a.jsonl", max_record_bytes=limit + 3)
    assert got == [fits, over, crlf, TOO_LARGE, fits, over]
    got = json_records(tmp_path, "a.jsonl", max_record_bytes=limit)
    assert got == [TOO_LARGE, TOO_LARGE, crlf, TOO_LARGE, fits, TOO_LARGE]
    rejected = [r for _, r in streams.json_records(str(tmp_path), "a.jsonl", max_record_bytes=limit)]
    assert rejected[1].detail.startswith(f"line 2 has 17 bytes, over max_record_bytes {limit}")
    assert rejected[3].detail.startswith(f"line 5 has {len(long)} bytes")


def test_malformed_lines_are_rejected_one_by_one(tmp_path: Path):
    write(tmp_path / "a.jsonl", '{"a": 1}\n{broken\n' + "[" * 100_000 + "]" * 100_000 + '\n1 2\n{"b": 2}\n')
    assert json_records(tmp_path, "a.jsonl") == [{"a": 1}, *["malformed_record"] * 3, {"b": 2}]


# ---- JSON arrays --------------------------------------------------------------------------------------


def array_elements(text: str, chunk: int, limit: int) -> list:
    return plain(streams._json_array(io.StringIO(text), chunk, limit))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 1 << 20])
def test_array_elements_over_the_limit_are_skipped_and_reading_goes_on(chunk: int):
    hostile = [
        '"' + "x" * 40 + '"',  # a long string
        '{"a": "' + 'y\\"]}\\\\' * 8 + '", "b": [[], {}]}',  # escaped quotes, brackets inside strings
        "1" * 30,  # a long number
        "[" + ", ".join(['"]"'] * 10) + "]",
        "-" + "9" * 25 + ".5e-3",
    ]
    text = "[ " + " ,\n ".join(part for element in hostile for part in (element, '"ok"')) + " ]"
    assert array_elements(text, chunk, 20) == [TOO_LARGE, "ok"] * len(hostile)


def test_array_elements_that_cannot_be_decoded_are_skipped():
    deep = "[" * 100_000 + "]" * 100_000
    digits = "7" * 5000  # more than Python converts to an int
    text = f'[{{"a": 1}}, {deep}, {digits}, {{"b": 2}}]'
    assert array_elements(text, 4096, 1 << 20) == [{"a": 1}, "malformed_record", "malformed_record", {"b": 2}]


def test_an_array_that_ends_inside_a_skipped_element_is_unreadable_from_there():
    with pytest.raises(FileUnreadable, match="ends inside record 1"):
        array_elements('[1, "' + "x" * 100, 8, 10)


@pytest.mark.timeout(120)
def test_one_huge_element_is_parsed_in_linear_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Work = characters the decoder is handed to scan. Re-scanning the element's growing buffer on
    # every chunk (as it was) makes it grow with the square of the size: 12 times the size at 24 MB.
    scanned = [0]
    raw_decode = json.JSONDecoder.raw_decode

    def counting(self: json.JSONDecoder, text: str, index: int = 0) -> tuple[object, int]:
        scanned[0] += len(text) - index
        return raw_decode(self, text, index)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counting)
    work = {}
    for size in (12 << 20, 24 << 20):
        write(tmp_path / "big.json", '[{"text": "' + "x" * size + '"}, 1]')
        scanned[0] = 0
        records = list(streams.json_records(str(tmp_path), "big.json", max_record_bytes=32 << 20))
        assert [index for index, _ in records] == [0, 1]
        assert len(records[0][1]["text"]) == size and records[1][1] == 1
        work[size] = scanned[0]
    assert work[24 << 20] <= 3 * (24 << 20)
    assert work[24 << 20] <= 2.5 * work[12 << 20]  # twice the size, about twice the work


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
BLANK = st.text(" \t\n\r", max_size=3)


@given(
    values=st.lists(JSON_VALUES, max_size=8),
    indents=st.lists(st.sampled_from([None, 0, 2]), min_size=8, max_size=8),
    ascii_only=st.booleans(),
    blanks=st.lists(BLANK, min_size=20, max_size=20),
    chunk=st.integers(1, 17),
    limit=st.integers(1, 80),
)
def test_arrays_split_into_the_same_records_as_json_loads(values, indents, ascii_only, blanks, chunk, limit):
    texts = [json.dumps(v, indent=i, ensure_ascii=ascii_only) for v, i in zip(values, indents, strict=False)]
    pieces = ["[", blanks[0]]
    for number, element in enumerate(texts):
        if number:
            pieces += [blanks[2 * number], ",", blanks[2 * number + 1]]
        pieces.append(element)
    pieces += [blanks[-1], "]", blanks[-2]]
    expected = [json.loads(t) if len(t.encode()) <= limit else TOO_LARGE for t in texts]
    assert array_elements("".join(pieces), chunk, limit) == expected


@given(
    values=st.lists(JSON_VALUES, max_size=8),
    ascii_only=st.booleans(),
    padding=st.lists(
        st.tuples(st.text(" \t", max_size=2), st.text(" \t", max_size=2)), min_size=8, max_size=8
    ),
    blank_lines=st.lists(st.text(" \t\r", max_size=3), min_size=9, max_size=9),
    endings=st.lists(st.sampled_from(["\n", "\r\n"]), min_size=9, max_size=9),
    limit=st.integers(1, 80),
)
def test_json_lines_split_into_the_same_records_as_json_loads(
    tmp_path_factory, values, ascii_only, padding, blank_lines, endings, limit
):
    tmp_path = tmp_path_factory.mktemp("lines")
    lines = [
        before + json.dumps(v, ensure_ascii=ascii_only) + after
        for v, (before, after) in zip(values, padding, strict=False)
    ]
    data, expected = "", []
    for number, line in enumerate(lines):
        for text in (blank_lines[number], line):
            data += text + endings[number]
            size = len((text + endings[number]).encode()) - 1  # the newline is not counted
            if size > limit:
                expected.append(TOO_LARGE)
            elif text.strip():
                expected.append(json.loads(text))
    write(tmp_path / "a.jsonl", data.encode())
    assert json_records(tmp_path, "a.jsonl", max_record_bytes=limit) == expected


# ---- memory: a huge record is never held ----------------------------------------------------------------


def write_huge_record(path: Path, before: bytes, size: int, after: bytes) -> None:
    """`before`, `size` bytes of "x", `after`, written a chunk at a time."""
    with open(path, "wb") as file:
        file.write(before)
        for _ in range(size >> 20):
            file.write(b"x" * (1 << 20))
        file.write(after)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["huge.jsonl", "huge.json"])
def test_a_huge_record_is_rejected_without_being_held(tmp_path: Path, name: str):
    lines = name.endswith(".jsonl")
    before = b'{"text": "' if lines else b'[{"text": "'
    after = b'"}\n{"text": "after"}\n' if lines else b'"}, {"text": "after"}]'
    write_huge_record(tmp_path / name, before, 160 << 20, after)
    source = {"name": "src", "format": "text", "path": str(tmp_path / name)}
    rows, growth = read_in_subprocess(source)
    assert [(key, reason) for key, reason, _ in rows] == [(f"{name}#0", TOO_LARGE), (f"{name}#1", None)]
    assert growth < 80 << 20  # the 16 MiB default limit, a few times over; the record is 160 MiB


# ---- Parquet ---------------------------------------------------------------------------------------------

PARQUET_CHECK = (
    PEAK
    + """
import sys
from pipeline import ingest
from pipeline.ingest import ConfigError, streams

before = peak()
rows = 0
for start, batch in streams.parquet_batches(sys.argv[1], sys.argv[2], ["image", "text"]):
    assert start == rows
    rows += batch.num_rows
print(rows, peak() - before)
"""
)


@pytest.mark.timeout(180)
def test_parquet_is_read_page_by_page_never_a_whole_column_chunk(tmp_path: Path):
    rows, value = 3072, 64 << 10  # one row group of 192 MiB, in pages of about 512 KiB
    images = pa.array([os.urandom(value) for _ in range(rows)], pa.binary())
    pq.write_table(
        pa.table({"image": images, "text": ["t"] * rows}),
        tmp_path / "big.parquet",
        row_group_size=rows,
        compression="none",
        use_dictionary=False,
        write_batch_size=8,
    )
    del images
    done = subprocess.run(
        [sys.executable, "-c", PARQUET_CHECK, str(tmp_path), "big.parquet"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    read, growth = map(int, done.stdout.split())
    assert read == rows
    assert growth < 64 << 20  # batches of 64 rows (4 MiB) and their pages, not the 192 MiB chunk


def test_lost_rows_are_counted_one_by_one_unless_the_count_is_implausible(tmp_path: Path):
    pq.write_table(pa.table({"other": [1, 2, 3]}), tmp_path / "small.parquet")
    ((start, lost),) = streams.parquet_batches(str(tmp_path), "small.parquet", ["text"])
    assert (start, lost.count, lost.rejected.reason) == (0, 3, "missing_field")
    assert [index for index, _ in lost.records(start)] == [0, 1, 2]
    # A million nulls fit in a few hundred bytes: that many rows are not expanded into rejects.
    pq.write_table(pa.table({"other": pa.nulls(1_000_000, pa.int64())}), tmp_path / "nulls.parquet")
    assert os.path.getsize(tmp_path / "nulls.parquet") * streams.MAX_ROWS_PER_BYTE < 1_000_000
    with pytest.raises(FileUnreadable, match="declares 1000000 such rows") as raised:
        list(streams.parquet_batches(str(tmp_path), "nulls.parquet", ["text"]))
    assert raised.value.reason == "missing_field"


# ---- the option ------------------------------------------------------------------------------------------


def test_max_record_bytes_is_an_option_of_every_format():
    for name, reader_format in ingest.READERS.items():
        assert reader_format.options().max_record_bytes == 16 << 20, name


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be at least 1"), (True, "must be an integer"), ("1MiB", "must be an integer")],
)
def test_max_record_bytes_is_validated(tmp_path: Path, value: object, message: str):
    write(tmp_path / "a.jsonl", "{}\n")
    with pytest.raises(ConfigError, match=rf"source\.max_record_bytes: {message}"):
        reader(tmp_path, format="text", path="a.jsonl", max_record_bytes=value)


@pytest.mark.parametrize("format_name", ["text", "mmc4", "ocr_jsonl", "grit"])
def test_json_lines_formats_apply_max_record_bytes(tmp_path: Path, format_name: str):
    write(tmp_path / "a.jsonl", '{"x": "' + "y" * 100 + '"}\n[1, 2]\n')
    source = reader(tmp_path, format=format_name, path="a.jsonl", max_record_bytes=50)
    _, rejects, counts = read_source(source)
    assert reasons(rejects) == {"a.jsonl#0": "record_too_large", "a.jsonl#1": "malformed_record"}
    assert counts.read == 2


@pytest.mark.timeout(120)
@given(
    text=st.text(alphabet='[]{}",:\\ \nab1e-', max_size=80),
    chunk=st.integers(1, 9),
    limit=st.integers(1, 12),
)
def test_broken_arrays_end_in_records_rejects_or_one_unreadable_rest(text, chunk, limit):
    try:
        for record in streams._json_array(io.StringIO("[" + text), chunk, limit):
            assert not isinstance(record, Rejected) or record.reason in (TOO_LARGE, "malformed_record")
    except FileUnreadable:
        pass
