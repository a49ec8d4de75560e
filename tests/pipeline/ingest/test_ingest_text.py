"""pipeline.ingest.text: text-only documents from JSON Lines or Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import CORRUPTIONS, corrupt, read_source, reader, reasons, texts, write


def test_jsonl_and_parquet(tmp_path: Path):
    lines = [
        {"text": "First document.\nTwo lines.", "source": "web", "id": 1},
        {"text": "Second.", "id": 2},
        {"text": ""},
        {"text": "nul\u0000"},
        {"body": "no text field"},
        {"text": 42},
        ["not", "an", "object"],
    ]
    write(tmp_path / "corpus" / "a.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n")
    write(tmp_path / "corpus" / "b.jsonl", b'{"text": "ok"}\n{"text": "\xff\xfe"}\n{"text": \n')
    table = pa.table({"text": ["Parquet doc.", None, "  "], "lang": ["en", "fr", "de"], "junk": [1, 2, 3]})
    (tmp_path / "corpus" / "c").mkdir()
    pq.write_table(table, tmp_path / "corpus" / "c" / "part.parquet")
    source = reader(tmp_path, format="text", path="corpus", meta_fields=["id", "lang"])
    assert source.files() == ["a.jsonl", "b.jsonl", "c/part.parquet"]
    samples, rejects, counts = read_source(source)
    assert [(s["key"], texts(s), json.loads(s["meta"])) for s in samples] == [
        ("a.jsonl#0", ["First document.\nTwo lines."], {"id": 1}),
        ("a.jsonl#1", ["Second."], {"id": 2}),
        ("b.jsonl#0", ["ok"], {}),
        ("c/part.parquet#0", ["Parquet doc."], {"lang": "en"}),
    ]
    assert all(s["kind"] == "text" and s["images"] == [] and s["content"][0]["role"] is None for s in samples)
    assert reasons(rejects) == {
        "a.jsonl#2": "empty_text",
        "a.jsonl#3": "bad_text",
        "a.jsonl#4": "missing_field",
        "a.jsonl#5": "bad_field",
        "a.jsonl#6": "malformed_record",
        "b.jsonl#1": "bad_text",
        "b.jsonl#2": "malformed_record",
        "c/part.parquet#1": "missing_field",
        "c/part.parquet#2": "empty_text",
    }
    assert counts.read == 7 + 3 + 3


def test_parquet_without_a_usable_text_column_rejects_each_row(tmp_path: Path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "t.parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "u.parquet")
    _, rejects, counts = read_source(reader(tmp_path, format="text", path="*.parquet", meta_fields=["lang"]))
    assert reasons(rejects) == {
        "t.parquet#0": "missing_field",
        "t.parquet#1": "missing_field",
        "u.parquet#0": "bad_field",
        "u.parquet#1": "bad_field",
        "u.parquet#2": "bad_field",
    }
    assert counts.read == 5
    assert rejects[2]["detail"] == "column 'text' has type int64, not string or binary"


def test_a_jsonl_file_whose_first_line_is_an_array_keeps_every_record(tmp_path: Path):
    lines = ["[1, 2]", *(json.dumps({"text": f"document {i}"}) for i in range(1000))]
    write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")
    samples, rejects, counts = read_source(reader(tmp_path, format="text", path="t.jsonl"))
    assert counts.read == 1001 and len(samples) == 1000
    assert reasons(rejects) == {"t.jsonl#0": "malformed_record"}
    assert texts(samples[-1]) == ["document 999"]


def test_records_over_max_record_bytes_are_rejected_and_reading_goes_on(tmp_path: Path):
    small, big = json.dumps({"text": "short"}), json.dumps({"text": "long " * 20})
    write(tmp_path / "t.jsonl", f"{small}\n{big}\n{small}\n")
    write(tmp_path / "t.json", f"[{small}, {big}, {small}]")
    source = reader(tmp_path, format="text", path="t.*", max_record_bytes=len(small))
    samples, rejects, _ = read_source(source)
    assert [s["key"] for s in samples] == ["t.json#0", "t.json#2", "t.jsonl#0", "t.jsonl#2"]
    assert reasons(rejects) == {"t.json#1": "record_too_large", "t.jsonl#1": "record_too_large"}


def test_parquet_strings_that_are_not_utf8(tmp_path: Path):
    # Parquet writers need not validate UTF-8: view bytes as strings to write such a file.
    text = pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary()).view(pa.string())
    tags = pa.array([[b"a"], [b"b"], [b"\xff"]], pa.list_(pa.binary())).view(pa.list_(pa.string()))
    pq.write_table(pa.table({"text": text, "tags": tags}), tmp_path / "t.parquet")
    samples, rejects, _ = read_source(reader(tmp_path, format="text", path="t.parquet", meta_fields=["tags"]))
    assert [(s["key"], json.loads(s["meta"])) for s in samples] == [("t.parquet#0", {"tags": ["a"]})]
    assert reasons(rejects) == {"t.parquet#1": "bad_text", "t.parquet#2": "bad_text"}


def test_text_field_option(tmp_path: Path):
    write(tmp_path / "t.jsonl", json.dumps({"content": "hello"}) + "\n")
    samples, _, _ = read_source(reader(tmp_path, format="text", path="t.jsonl", text_field="content"))
    assert texts(samples[0]) == ["hello"]


@given(
    records=st.lists(
        st.dictionaries(st.sampled_from(["text", "id"]), st.none() | st.text(max_size=8) | st.integers()),
        max_size=6,
    ),
    edits=CORRUPTIONS,
)
def test_fuzzed_jsonl_never_escapes(tmp_path_factory, records, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    data = corrupt("".join(json.dumps(r) + "\n" for r in records).encode(), edits)
    write(tmp_path / "t.jsonl", data)
    _, _, counts = read_source(reader(tmp_path, format="text", path="t.jsonl", meta_fields=["id"]))
    # A .jsonl file is read line by line, even when it starts with "[": one record per line that is not blank.
    assert counts.read == sum(
        1 for line in data.split(b"\n") if line.decode("utf-8", "surrogateescape").strip()
    )
