"""pipeline.ingest.llava: LLaVA / ShareGPT4V conversations from JSON arrays and JSON Lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import (
    BAD_IMAGES,
    CORRUPTIONS,
    animated_gif,
    corrupt,
    image_bytes,
    read_source,
    reader,
    reasons,
    texts,
    write,
)

from pipeline.ingest import streams

CAT = {"from": "human", "value": "<image>\nWhat is this?"}
ANSWER = {"from": "gpt", "value": "A cat."}


def jsonl(records: list[object]) -> str:
    return "".join((record if isinstance(record, str) else json.dumps(record)) + "\n" for record in records)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write(root / "cats" / "a.jpg", image_bytes("JPEG"))
    write(root / "cats" / "b.png", image_bytes("PNG", (20, 10), 50))
    write(root / "anim.gif", animated_gif(3))
    for name, (data, _) in BAD_IMAGES.items():
        write(root / "bad" / f"{name}.img", data)
    return root


def test_json_array_multi_image_and_text_only(tmp_path: Path, images: Path):
    records = [
        {"id": "one", "image": "cats/a.jpg", "conversations": [CAT, ANSWER]},
        {
            "id": "two",
            "image": ["cats/a.jpg", "cats/b.png"],
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Compare <image> and <image>."},
                {"from": "gpt", "value": "Both small."},
            ],
        },
        {
            "id": "three",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
        },
    ]
    write(tmp_path / "data" / "chat.json", json.dumps(records, indent=1))
    samples, rejects, counts = read_source(
        reader(tmp_path, format="llava", path="data/chat.json", images_root="images")
    )
    assert rejects == [] and counts.read == 3 and counts.samples == 3
    one, two, three = samples
    assert one["key"] == "chat.json#0" and one["kind"] == "conversation"
    assert [(s["turn"], s["role"], s["type"], s["text"], s["image"]) for s in one["content"]] == [
        (0, "user", "image", None, 0),
        (0, "user", "text", "\nWhat is this?", None),
        (1, "assistant", "text", "A cat.", None),
    ]
    assert one["images"][0]["path"] == "cats/a.jpg"
    assert one["images"][0]["bytes"] == image_bytes("JPEG")
    assert (one["images"][0]["width"], one["images"][0]["height"], one["images"][0]["format"]) == (
        16,
        12,
        "JPEG",
    )
    assert json.loads(one["meta"]) == {"id": "one"}
    assert [s["type"] for s in two["content"]] == ["text", "text", "image", "text", "image", "text", "text"]
    assert [s["role"] for s in two["content"]][:2] == ["system", "user"]
    assert texts(two) == ["Be brief.", "Compare ", " and ", ".", "Both small."]
    assert [image["path"] for image in two["images"]] == ["cats/a.jpg", "cats/b.png"]
    assert [image["format"] for image in two["images"]] == ["JPEG", "PNG"]
    assert three["images"] == [] and three["kind"] == "conversation"


def test_images_without_placeholder_go_first_in_the_first_user_turn(tmp_path: Path, images: Path):
    record = {
        "image": ["cats/a.jpg", "cats/b.png"],
        "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, ANSWER],
    }
    write(tmp_path / "chat.jsonl", jsonl([record]))
    (sample,), _, _ = read_source(reader(tmp_path, format="llava", path="chat.jsonl", images_root="images"))
    user = [(s["type"], s["text"]) for s in sample["content"] if s["turn"] == 1]
    assert user == [("image", None), ("text", "\n"), ("image", None), ("text", "\nQ")]


def test_animated_image_keeps_first_frame_and_records_frames(tmp_path: Path, images: Path):
    record = {"image": ["anim.gif", "cats/a.jpg"], "conversations": [{"from": "human", "value": "Q"}, ANSWER]}
    write(tmp_path / "chat.jsonl", jsonl([record]))
    source = reader(tmp_path, format="llava", path="chat.jsonl", images_root="images")
    (sample,), _, _ = read_source(source)
    assert json.loads(sample["meta"])["n_frames"] == [3, 1]
    assert sample["images"][0]["format"] == "GIF"


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_files(tmp_path: Path, images: Path, name: str):
    write(tmp_path / "chat.jsonl", jsonl([{"image": f"bad/{name}.img", "conversations": [CAT, ANSWER]}]))
    _, (reject,), _ = read_source(reader(tmp_path, format="llava", path="chat.jsonl", images_root="images"))
    assert (reject["stage"], reject["reason"]) == ("image", BAD_IMAGES[name][1])
    assert reject["key"] == "chat.jsonl#0"


def test_header_check_accepts_what_only_a_decode_would_catch(tmp_path: Path, images: Path):
    write(tmp_path / "chat.jsonl", jsonl([{"image": "bad/truncated.img", "conversations": [CAT, ANSWER]}]))
    source = reader(tmp_path, format="llava", path="chat.jsonl", images_root="images", image_check="header")
    (sample,), _, _ = read_source(source)
    assert (sample["images"][0]["width"], sample["images"][0]["height"]) == (64, 48)


def test_max_image_pixels(tmp_path: Path, images: Path):
    write(tmp_path / "chat.jsonl", jsonl([{"image": "cats/a.jpg", "conversations": [CAT, ANSWER]}]))
    source = reader(tmp_path, format="llava", path="chat.jsonl", images_root="images", max_image_pixels=100)
    _, (reject,), _ = read_source(source)
    assert reject["reason"] == "image_too_large" and "192" in reject["detail"]


BAD_RECORDS = {
    "missing image file": ({"image": "cats/none.jpg", "conversations": [CAT, ANSWER]}, "missing_image"),
    "absolute image path outside images_root": (
        {"image": "/etc/passwd", "conversations": [CAT, ANSWER]},
        "outside_root",
    ),
    "image path leaving the root": ({"image": "../x.jpg", "conversations": [CAT, ANSWER]}, "bad_field"),
    "image not a path": ({"image": 3, "conversations": [CAT, ANSWER]}, "bad_field"),
    "no conversations": ({"image": "cats/a.jpg"}, "missing_field"),
    "conversations not a list": ({"conversations": "hi"}, "bad_field"),
    "empty conversations": ({"conversations": []}, "no_content"),
    "turn not an object": ({"conversations": ["hi"]}, "bad_field"),
    "turn without from": ({"conversations": [{"value": "hi"}]}, "missing_field"),
    "unknown role": ({"conversations": [{"from": "robot", "value": "hi"}]}, "bad_field"),
    "turn without value": ({"conversations": [{"from": "human"}]}, "missing_field"),
    "value not text": ({"conversations": [{"from": "human", "value": 5}]}, "bad_field"),
    "NUL in text": ({"conversations": [{"from": "human", "value": "a\u0000b"}, ANSWER]}, "bad_text"),
    "lone surrogate": ({"conversations": [{"from": "human", "value": "a\ud800b"}, ANSWER]}, "bad_text"),
    "more placeholders than images": (
        {"image": "cats/a.jpg", "conversations": [{"from": "human", "value": "<image><image>"}, ANSWER]},
        "placeholder_mismatch",
    ),
    "placeholder without image": ({"conversations": [CAT, ANSWER]}, "placeholder_mismatch"),
    "placeholder in an answer": (
        {
            "image": ["cats/a.jpg"],
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "<image>"}],
        },
        "placeholder_mismatch",
    ),
    "images but no user turn": ({"image": "cats/a.jpg", "conversations": [ANSWER]}, "placeholder_mismatch"),
    "record not an object": ([1, 2], "malformed_record"),
}


def test_bad_records_become_rejects_and_good_ones_survive(tmp_path: Path, images: Path):
    lines = [json.dumps(record) for record, _ in BAD_RECORDS.values()]
    lines += ["{not json", json.dumps({"image": "cats/a.jpg", "conversations": [CAT, ANSWER]})]
    data = "\n\n".join(lines).encode() + b'\n{"conversations": [{"from": "human", "value": "caf\xe9"}]}\n'
    write(tmp_path / "chat.jsonl", data)
    samples, rejects, counts = read_source(
        reader(tmp_path, format="llava", path="chat.jsonl", images_root="images")
    )
    expected = {f"chat.jsonl#{i}": reason for i, (_, reason) in enumerate(BAD_RECORDS.values())}
    expected[f"chat.jsonl#{len(BAD_RECORDS)}"] = "malformed_record"
    expected[f"chat.jsonl#{len(BAD_RECORDS) + 2}"] = "bad_text"  # Latin-1 byte: not UTF-8
    assert reasons(rejects) == expected
    assert [s["key"] for s in samples] == [f"chat.jsonl#{len(BAD_RECORDS) + 1}"]
    assert counts.read == len(BAD_RECORDS) + 3


def test_broken_json_array_keeps_earlier_records_and_rejects_the_rest(tmp_path: Path, images: Path):
    good = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, ANSWER]})
    write(tmp_path / "chat.json", f"[{good}, {good}, {{broken")
    samples, rejects, _ = read_source(
        reader(tmp_path, format="llava", path="chat.json", images_root="images")
    )
    assert [s["key"] for s in samples] == ["chat.json#0", "chat.json#1"]
    (reject,) = rejects
    assert (reject["key"], reject["reason"], reject["sample_id"]) == ("chat.json", "unreadable_file", None)
    assert "record 2" in reject["detail"]


def test_folder_of_files_and_record_limit(tmp_path: Path, images: Path):
    record = {"conversations": [{"from": "human", "value": "Hi"}, ANSWER]}
    write(tmp_path / "corpus" / "b" / "part.jsonl", jsonl([record] * 4))
    write(tmp_path / "corpus" / "a.json", json.dumps([record] * 3))
    write(tmp_path / "corpus" / "notes.txt", "not a data file")
    write(tmp_path / "corpus" / ".hidden.jsonl", "ignored")
    source = reader(tmp_path, format="llava", path="corpus", max_records_per_file=2)
    assert source.files() == ["a.json", "b/part.jsonl", "notes.txt"]
    samples, rejects, _ = read_source(source)
    assert [s["key"] for s in samples] == ["a.json#0", "a.json#1", "b/part.jsonl#0", "b/part.jsonl#1"]
    assert [(r["key"], r["reason"]) for r in rejects] == [("notes.txt", "unsupported_file")]


def test_same_corpus_elsewhere_gives_the_same_rows(tmp_path: Path):
    rows = []
    for place in ("one", "two/deeper"):
        write(tmp_path / place / "img" / "a.jpg", image_bytes("JPEG"))
        write(
            tmp_path / place / "chat.jsonl", jsonl([{"image": "img/a.jpg", "conversations": [CAT, ANSWER]}])
        )
        rows.append(read_source(reader(tmp_path / place, format="llava", path="chat.jsonl"))[0])
    assert rows[0] == rows[1]


RECORD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["<image>", "cats/a.jpg"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["from", "value", "image", "id"]), inner, max_size=3)
    ),
    max_leaves=8,
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "image": RECORD_VALUES,
        "conversations": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "from": st.sampled_from(["human", "gpt", "system", "x"]) | RECORD_VALUES,
                    "value": st.text(max_size=20)
                    | st.sampled_from(["<image>", "<image>\nQ"])
                    | RECORD_VALUES,
                },
            ),
            max_size=3,
        )
        | RECORD_VALUES,
    },
)


@given(records=st.lists(RECORDS, min_size=1, max_size=5), edits=CORRUPTIONS, array=st.booleans())
def test_fuzzed_records_and_bytes_never_escape(tmp_path_factory, records, edits, array):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "cats" / "a.jpg", image_bytes("JPEG"))
    name = "chat.json" if array else "chat.jsonl"
    clean = json.dumps(records).encode() if array else jsonl(records).encode()
    for data in (clean, corrupt(clean, edits)):
        write(tmp_path / name, data)
        _, _, counts = read_source(reader(tmp_path, format="llava", path=name))
        if not array:
            lines = [line for line in data.split(b"\n") if line.decode("utf-8", "surrogateescape").strip()]
            assert counts.read == len(lines)
        elif data == clean:
            assert counts.read == len(records)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@given(values=st.lists(JSON_VALUES, max_size=6), chunk=st.integers(1, 9), indent=st.sampled_from([None, 1]))
def test_json_arrays_stream_across_any_chunk_boundary(values, chunk, indent):
    text = json.dumps(values, indent=indent)
    assert list(streams._json_array(io.StringIO(text), chunk)) == values


def test_blank_turns_are_kept_as_the_official_processor_keeps_them(tmp_path: Path):
    records = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": " "}]},
        {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "Hello"}]},
    ]
    write(tmp_path / "data" / "chat.jsonl", jsonl(records))
    samples, rejects, _ = read_source(reader(tmp_path, format="llava", path="data/chat.jsonl"))
    assert rejects == []
    blank_answer, empty_question = (
        [(s["turn"], s["role"], s["text"]) for s in x["content"]] for x in samples
    )
    assert blank_answer == [(0, "user", "Hi"), (1, "assistant", " ")]
    assert empty_question == [(0, "user", ""), (1, "assistant", "Hello")]


def test_a_line_over_max_record_bytes_is_one_reject_and_reading_goes_on(tmp_path: Path):
    records = [{"conversations": [CAT | {"value": "Hi"}, ANSWER]}] * 3
    long = {"conversations": [{"from": "human", "value": "x" * 500}, ANSWER]}
    write(tmp_path / "data" / "chat.jsonl", jsonl([records[0], long, *records[1:]]))
    samples, rejects, counts = read_source(
        reader(tmp_path, format="llava", path="data/chat.jsonl", max_record_bytes=200)
    )
    assert (counts.read, len(samples)) == (4, 3)
    assert [(r["key"], r["reason"]) for r in rejects] == [("chat.jsonl#1", "record_too_large")]
