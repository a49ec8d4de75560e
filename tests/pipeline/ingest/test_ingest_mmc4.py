"""pipeline.ingest.mmc4: MMC4 documents, each image right before its matched sentence."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def info(name: str, sentence: object, sim: object = 0.3) -> dict:
    return {
        "image_name": name,
        "raw_url": f"http://x/{name}",
        "matched_text_index": sentence,
        "matched_sim": sim,
    }


def test_images_before_their_sentences_and_min_sim(tmp_path: Path):
    write(tmp_path / "a.jpg", image_bytes("JPEG", (16, 12)))
    write(tmp_path / "b.png", image_bytes("PNG", (8, 10)))
    documents = [
        {
            "url": "http://doc",
            "text_list": ["First.", "Second.", "Third."],
            "image_info": [
                info("b.png", 2, 0.31),
                info("a.jpg", 0, 0.25),
                info("gone.jpg", 2),
                info("a.jpg", 2, 0.1),
            ],
            "similarity_matrix": [[0.1, 0.2, 0.3]],
        },
        {"text_list": ["Only."], "image_info": [info("gone.jpg", 0)]},
    ]
    write(tmp_path / "docs.jsonl", jsonl(documents))
    samples, rejects, _ = read_source(reader(tmp_path, format="mmc4", path="docs.jsonl"))
    (sample,) = samples
    parts = [s["text"] if s["type"] == "text" else s["image"] for s in sample["content"]]
    assert parts == [0, "First.", "Second.", 1, 2, "Third."]
    assert [i["path"] for i in sample["images"]] == ["a.jpg", "b.png", "a.jpg"]
    meta = json.loads(sample["meta"])
    assert meta["skipped_images"] == [{"position": 2, "reason": "missing_image"}]
    assert meta["image_urls"] == ["http://x/a.jpg", "http://x/b.png", "http://x/a.jpg"]
    assert meta["matched_sim"] == [0.25, 0.31, 0.1] and "similarity_matrix" not in meta
    assert reasons(rejects) == {"docs.jsonl#1": "missing_image"}

    (sample,), _, _ = read_source(reader(tmp_path, format="mmc4", path="docs.jsonl", min_sim=0.3, name="s2"))
    assert [i["path"] for i in sample["images"]] == ["b.png"]
    assert json.loads(sample["meta"])["below_min_sim"] == 2


def test_bad_documents(tmp_path: Path):
    documents = [
        {"text_list": ["a"]},
        {"text_list": "a", "image_info": []},
        {"text_list": ["a"], "image_info": [info("a.jpg", 3)]},
        {"text_list": ["a"], "image_info": [info("a.jpg", None)]},
        {"text_list": ["a"], "image_info": [info("/etc/passwd", 0)]},
        {"text_list": ["a"], "image_info": []},
        {"text_list": [" "], "image_info": [info("a.jpg", 0)]},
        {"text_list": [7], "image_info": []},
        "x",
    ]
    write(tmp_path / "a.jpg", image_bytes())
    write(tmp_path / "d.jsonl", jsonl(documents))
    _, rejects, _ = read_source(reader(tmp_path, format="mmc4", path="d.jsonl"))
    assert list(reasons(rejects).values()) == [
        "missing_field",
        "bad_field",
        "bad_field",
        "missing_field",
        "outside_root",  # an absolute path is read only inside images_root
        "missing_field",
        "empty_text",
        "bad_field",
        "malformed_record",
    ]
    write(tmp_path / "d.jsonl", jsonl([{"text_list": ["a"], "image_info": [info("a.jpg", 0, "high")]}]))
    _, rejects, _ = read_source(reader(tmp_path, format="mmc4", path="d.jsonl", min_sim=0.2))
    assert reasons(rejects) == {"d.jsonl#0": "bad_field"}


INFOS = st.lists(
    st.builds(
        info,
        st.sampled_from(["a.jpg", "b.jpg", "../a.jpg"]),
        st.one_of(st.integers(-1, 3), st.none()),
        st.one_of(st.floats(allow_nan=True), st.none()),
    ),
    max_size=4,
)


@given(
    sentences=st.lists(st.text(max_size=4), max_size=3),
    infos=INFOS,
    edits=st.one_of(st.none(), CORRUPTIONS),
    min_sim=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzzed_documents_never_escape(tmp_path_factory, sentences, infos, edits, min_sim):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "a.jpg", image_bytes())
    data = jsonl([{"text_list": sentences, "image_info": infos}]).encode()
    write(tmp_path / "d.jsonl", data if edits is None else corrupt(data, edits))
    _, _, counts = read_source(reader(tmp_path, format="mmc4", path="d.jsonl", min_sim=min_sim))
    assert counts.read == 1 or edits is not None
