"""pipeline.ingest.grit: grounded captions with normalized phrase boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write

from pipeline.errors import ConfigError
from pipeline.templates import render

CAPTION = "a dog on a red sofa"


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_parquet_embedded_images_and_spans(tmp_path: Path):
    rows = {
        "key": ["000000001", "000000002"],
        "caption": [CAPTION, CAPTION],
        "width": [400, 400],
        "height": [300, 300],
        "noun_chunks": [[[0.0, 5.0, 0.1, 0.2, 0.5, 0.9, 0.8], [9.0, 19.0, 0.4, 0.5, 1.2, 1.0, 0.3]], None],
        "ref_exps": [[[0.0, 19.0, 0.0, 0.0, 1.0, 1.0, 0.9], [0.0, 5.0, 0.1, 0.2, 0.5, 0.9, 0.8]], []],
        "jpg": [image_bytes("JPEG", (40, 20)), image_bytes("JPEG", (40, 20))],
        "url": ["http://x/1", "http://x/2"],
    }
    pq.write_table(pa.table(rows), tmp_path / "grit.parquet")
    (sample,), rejects, _ = read_source(reader(tmp_path, format="grit", path="grit.parquet"))
    assert reasons(rejects) == {"grit.parquet#1": "missing_field"}
    assert sample["kind"] == "grounding" and sample["content"][1]["text"] == CAPTION
    assert [(r["phrase"], r["boxes"], r["segment"], r["start"], r["end"]) for r in sample["regions"]] == [
        ("a dog", [[4.0, 4.0, 20.0, 18.0]], 1, 0, 5),
        ("a red sofa", [[16.0, 10.0, 40.0, 20.0]], 1, 9, 19),
        (CAPTION, [[0.0, 0.0, 40.0, 20.0]], 1, 0, 19),
    ]
    assert json.loads(sample["meta"]) == {
        "key": "000000001",
        "url": "http://x/1",
        "width": 400,
        "height": 300,
    }
    answer = render(sample).blocks[-1].parts
    assert any("<|ref|>" in str(part) for part in answer)

    source = reader(
        tmp_path, format="grit", path="grit.parquet", min_score=0.5, span_fields=["noun_chunks"], name="s2"
    )
    (sample,), _, _ = read_source(source)
    assert [r["phrase"] for r in sample["regions"]] == ["a dog"]


def test_images_root_paths_and_bad_rows(tmp_path: Path):
    write(tmp_path / "images" / "k1.jpg", image_bytes("JPEG", (40, 20)))
    write(tmp_path / "images" / "sub" / "p.png", image_bytes("PNG", (8, 10)))
    span = [0, 5, 0.1, 0.1, 0.5, 0.5, 0.9]
    records = [
        {"key": "k1", "caption": CAPTION, "noun_chunks": [span]},
        {"key": "k2", "caption": CAPTION, "noun_chunks": [span], "image": "sub/p.png"},
        {"key": "k3", "caption": CAPTION, "noun_chunks": [span]},
        {"caption": CAPTION, "noun_chunks": [span]},
        {"key": "k1", "noun_chunks": [span]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0, 50, 0, 0, 1, 1, 1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0.5, 5, 0, 0, 1, 1, 1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0, 5, 0, 0, 1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0, 5, 0.5, 0, 0.5, 1, 1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0, 5, 1.1, 0, 1.5, 1, 1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": [[0, 5, 0, 0, 1, 1, 0.1]]},
        {"key": "k1", "caption": CAPTION, "noun_chunks": "x"},
    ]
    write(tmp_path / "g.jsonl", jsonl(records))
    samples, rejects, _ = read_source(
        reader(tmp_path, format="grit", path="g.jsonl", images_root="images", min_score=0.5)
    )
    assert [s["images"][0]["path"] for s in samples] == ["k1.jpg", "sub/p.png"]
    assert list(reasons(rejects).values()) == [
        "missing_image",
        "missing_field",
        "missing_field",
        "bad_field",
        "bad_field",
        "bad_field",
        "degenerate_box",
        "box_outside_image",
        "filtered",
        "bad_field",
    ]


@pytest.mark.parametrize("value", ["high", True, float("nan")], ids=repr)
def test_min_score_must_be_a_number(tmp_path: Path, value: object):
    write(tmp_path / "g.jsonl", "")
    with pytest.raises(ConfigError, match=r"source\.min_score: must be a finite number"):
        reader(tmp_path, format="grit", path="g.jsonl", min_score=value)


NUMBERS = st.one_of(st.integers(-3, 30), st.floats(-0.5, 1.5), st.floats(allow_nan=True), st.booleans())


@given(
    spans=st.lists(st.lists(NUMBERS, min_size=6, max_size=8), max_size=3),
    edits=st.one_of(st.none(), CORRUPTIONS),
)
def test_fuzzed_rows_never_escape(tmp_path_factory, spans, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "k.jpg", image_bytes("JPEG", (40, 20)))
    data = jsonl([{"key": "k", "caption": CAPTION, "ref_exps": spans}] * 2).encode()
    write(tmp_path / "g.jsonl", data if edits is None else corrupt(data, edits))
    samples, _, counts = read_source(reader(tmp_path, format="grit", path="g.jsonl"))
    assert counts.read == 2 or edits is not None
    for sample in samples:
        for region in sample["regions"]:
            x1, y1, x2, y2 = region["boxes"][0]
            assert 0 <= x1 < x2 <= 40 and 0 <= y1 < y2 <= 20
