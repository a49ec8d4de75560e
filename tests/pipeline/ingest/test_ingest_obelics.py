"""pipeline.ingest.obelics: interleaved documents with parallel texts/images lists."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import BAD_IMAGES, CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write

from pipeline.errors import ConfigError


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def structure(sample: dict) -> list[str]:
    return [s["text"] if s["type"] == "text" else f"<{s['image']}>" for s in sample["content"]]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write(tmp_path / "images" / "a.jpg", image_bytes("JPEG", (16, 12)))
    write(tmp_path / "images" / "b.png", image_bytes("PNG", (8, 10)))
    write(tmp_path / "images" / "bad.jpg", BAD_IMAGES["truncated"][0])
    return tmp_path / "images"


def test_jsonl_documents_keep_their_order(tmp_path: Path, images: Path):
    documents = [
        {
            "texts": ["Intro.", None, "Middle.", None, "", "End."],
            "images": [None, "https://x.org/p/a.jpg?w=1", None, "http://y.org/b.png", None, None],
            "url": "https://doc",
        },
        {"texts": [None, "Only missing images."], "images": ["https://x.org/gone.jpg", None]},
        {"texts": ["Text.", None, None], "images": [None, "https://x/bad.jpg", "https://x/a.jpg"]},
    ]
    write(tmp_path / "docs.jsonl", jsonl(documents))
    samples, rejects, _ = read_source(
        reader(tmp_path, format="obelics", path="docs.jsonl", images_root="images")
    )
    first, third = samples
    assert first["kind"] == "interleaved" and structure(first) == ["Intro.", "<0>", "Middle.", "<1>", "End."]
    assert [i["path"] for i in first["images"]] == ["a.jpg", "b.png"]
    assert json.loads(first["meta"]) == {"url": "https://doc"}
    assert structure(third) == ["Text.", "<0>"]
    assert json.loads(third["meta"])["skipped_images"] == [{"position": 1, "reason": "truncated_image"}]
    assert reasons(rejects) == {"docs.jsonl#1": "missing_image"}


def test_missing_images_reject(tmp_path: Path, images: Path):
    write(tmp_path / "d.jsonl", jsonl([{"texts": ["T", None], "images": [None, "http://x/bad.jpg"]}]))
    source = reader(tmp_path, format="obelics", path="d.jsonl", images_root="images", missing_images="reject")
    assert reasons(read_source(source)[1]) == {"d.jsonl#0": "truncated_image"}


def test_parquet_embedded_bytes_and_url_map(tmp_path: Path, images: Path):
    jpeg, png = image_bytes("JPEG", (16, 12)), image_bytes("PNG", (8, 10), color=9)
    write(images / "00000" / "000000001.jpg", png)
    pq.write_table(
        pa.table(
            {
                "url": ["http://m/1", "http://m/2", "http://m/3"],
                "key": ["000000001", "000000002", None],
                "status": ["success", "failed_to_download", "success"],
            }
        ),
        images / "00000.parquet",
    )
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "texts": pa.array([["A", None], [None, "B", None]], pa.list_(pa.string())),
            "images": pa.array(
                [[None, {"bytes": jpeg, "path": "x/a.jpg"}], [None, None, None]], pa.list_(image_type)
            ),
            "id": [1, 2],
        }
    )
    pq.write_table(table, tmp_path / "embedded.parquet")
    samples, rejects, _ = read_source(reader(tmp_path, format="obelics", path="embedded.parquet"))
    assert structure(samples[0]) == ["A", "<0>"] and samples[0]["images"][0]["path"] == "x/a.jpg"
    assert reasons(rejects) == {"embedded.parquet#1": "bad_field"}  # position 0: neither text nor image

    documents = [{"texts": ["T", None, None], "images": [None, "http://m/1", "http://m/2"]}]
    write(tmp_path / "m.jsonl", jsonl(documents))
    source = reader(tmp_path, format="obelics", path="m.jsonl", images_root="images", url_map="00000.parquet")
    (sample,), _, _ = read_source(source)
    assert [i["path"] for i in sample["images"]] == ["00000/000000001.jpg"]
    assert json.loads(sample["meta"])["skipped_images"] == [{"position": 2, "reason": "missing_image"}]


def test_bad_documents(tmp_path: Path, images: Path):
    documents = [
        {"texts": ["a"], "images": []},
        {"texts": ["a", "b"], "images": [None, "http://x/a.jpg"]},
        {"images": ["http://x/a.jpg"]},
        {"texts": "a", "images": []},
        {"texts": [None], "images": ["http://x/a.jpg"]},
        {"texts": ["a\u0000"], "images": [None]},
        {"texts": ["  "], "images": [None]},
        {"texts": ["a", None], "images": [None, "http://x/"]},
        [1],
    ]
    write(tmp_path / "d.jsonl", jsonl(documents) + "{broken\n")
    _, rejects, counts = read_source(reader(tmp_path, format="obelics", path="d.jsonl", images_root="images"))
    assert list(reasons(rejects).values()) == [
        "bad_field",
        "bad_field",
        "missing_field",
        "bad_field",
        "empty_text",
        "bad_text",
        "empty_text",
        "bad_field",
        "malformed_record",
        "malformed_record",
    ]
    assert counts.read == 10


def test_config_errors(tmp_path: Path, images: Path):
    write(tmp_path / "d.jsonl", "")
    with pytest.raises(ConfigError, match=r"source\.url_map: 'nope\.parquet' does not exist"):
        reader(tmp_path, format="obelics", path="d.jsonl", images_root="images", url_map="nope.parquet")
    with pytest.raises(ConfigError, match=r"source\.missing_images"):
        reader(tmp_path, format="obelics", path="d.jsonl", missing_images="drop")


DOCUMENTS = st.lists(
    st.fixed_dictionaries(
        {
            "texts": st.lists(st.one_of(st.none(), st.text(max_size=5), st.integers()), max_size=4),
            "images": st.lists(
                st.one_of(st.none(), st.sampled_from(["http://x/a.jpg", "u/b.png", "", "x/.."])), max_size=4
            ),
        }
    ),
    max_size=4,
)


@given(documents=DOCUMENTS, edits=st.one_of(st.none(), CORRUPTIONS))
def test_fuzzed_documents_never_escape(tmp_path_factory, documents, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "a.jpg", image_bytes("JPEG"))
    data = jsonl(documents).encode()
    write(tmp_path / "d.jsonl", data if edits is None else corrupt(data, edits))
    samples, _, counts = read_source(reader(tmp_path, format="obelics", path="d.jsonl"))
    if edits is None:
        assert counts.read == len(documents)
    assert all(s["images"] for s in samples)
