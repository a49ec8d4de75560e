"""pipeline.ingest.ocr_jsonl: image + transcription records with optional line boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import BAD_IMAGES, CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write

from pipeline.templates import render


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_lines_become_regions_with_spans(tmp_path: Path):
    write(tmp_path / "p.png", image_bytes("PNG", (40, 20)))
    records = [
        {
            "image": "p.png",
            "text": "Hello world\nSecond line",
            "lines": [
                {"text": "Hello world", "bbox": [1, 1, 30, 8]},
                {"text": "Second line", "bbox": [-5, 10, 50, 19]},
                {"text": "not in text", "bbox": [0, 0, 5, 5]},
            ],
            "source_id": 3,
        },
        {"image": "p.png", "text": "No lines."},
    ]
    write(tmp_path / "o.jsonl", jsonl(records))
    (first, second), rejects, _ = read_source(reader(tmp_path, format="ocr_jsonl", path="o.jsonl"))
    assert rejects == [] and first["kind"] == second["kind"] == "ocr"
    assert [(r["phrase"], r["boxes"], r["segment"], r["start"], r["end"]) for r in first["regions"]] == [
        ("Hello world", [[1, 1, 30, 8]], 1, 0, 11),
        ("Second line", [[0, 10, 40, 19]], 1, 12, 23),
        ("not in text", [[0, 0, 5, 5]], None, None, None),
    ]
    assert json.loads(first["meta"]) == {"source_id": 3} and second["regions"] == []
    rendered = render(first)
    assert "<|det|>" in "".join(p for b in rendered.blocks for p in b.parts if isinstance(p, str))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"text": "x"}, "missing_field"),
        ({"image": "p.png"}, "missing_field"),
        ({"image": "p.png", "text": " "}, "empty_text"),
        ({"image": "p.png", "text": "x", "lines": {}}, "bad_field"),
        ({"image": "p.png", "text": "x", "lines": [{"text": "x", "bbox": [1, 2, 3]}]}, "bad_field"),
        ({"image": "p.png", "text": "x", "lines": [{"text": "x", "bbox": [5, 5, 5, 9]}]}, "degenerate_box"),
        (
            {"image": "p.png", "text": "x", "lines": [{"text": "x", "bbox": [40, 0, 50, 9]}]},
            "box_outside_image",
        ),
        ({"image": "p.png", "text": "x", "lines": [{"bbox": [0, 0, 5, 5]}]}, "missing_field"),
        ({"image": "gone.png", "text": "x"}, "missing_image"),
        *[({"image": f"{name}.png", "text": "x"}, reason) for name, (_, reason) in BAD_IMAGES.items()],
    ],
    ids=repr,
)
def test_bad_records(tmp_path: Path, record: dict, reason: str):
    write(tmp_path / "p.png", image_bytes("PNG", (40, 20)))
    for name, (data, _) in BAD_IMAGES.items():
        write(tmp_path / f"{name}.png", data)
    write(tmp_path / "o.jsonl", jsonl([record]))
    assert reasons(read_source(reader(tmp_path, format="ocr_jsonl", path="o.jsonl"))[1]) == {
        "o.jsonl#0": reason
    }


BOXES = st.lists(st.one_of(st.integers(-50, 60), st.floats(allow_nan=True), st.text(max_size=1)), max_size=5)


@given(
    lines=st.lists(st.fixed_dictionaries({"text": st.text(max_size=3), "bbox": BOXES}), max_size=3),
    edits=st.one_of(st.none(), CORRUPTIONS),
)
def test_fuzzed_records_never_escape(tmp_path_factory, lines, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "p.png", image_bytes("PNG", (40, 20)))
    data = jsonl([{"image": "p.png", "text": "abc", "lines": lines}] * 2).encode()
    write(tmp_path / "o.jsonl", data if edits is None else corrupt(data, edits))
    _, _, counts = read_source(reader(tmp_path, format="ocr_jsonl", path="o.jsonl"))
    assert counts.read == 2 or edits is not None
