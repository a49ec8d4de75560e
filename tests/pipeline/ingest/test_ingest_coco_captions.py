"""pipeline.ingest.coco_captions: one caption sample per annotation of a COCO captions file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from ingest_support import (
    BAD_IMAGES,
    CORRUPTIONS,
    corrupt,
    image_bytes,
    read_source,
    reader,
    reasons,
    texts,
    write,
)

from pipeline.ingest import checks


def coco(images: list[dict], annotations: list[dict]) -> str:
    return json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write(tmp_path / "train2017" / "000001.jpg", image_bytes("JPEG", (16, 12)))
    write(tmp_path / "train2017" / "000002.png", image_bytes("PNG", (8, 10)))
    for name, (data, _) in BAD_IMAGES.items():
        write(tmp_path / "train2017" / f"{name}.jpg", data)
    return tmp_path


def test_one_sample_per_caption_grouped_by_image(corpus: Path, monkeypatch: pytest.MonkeyPatch):
    images = [
        {"id": 1, "file_name": "000001.jpg", "width": 16, "height": 12, "coco_url": "http://x/1.jpg"},
        {"id": 2, "file_name": "000002.png", "width": 8, "height": 10},
        {"id": 3, "file_name": "000003.jpg", "width": 8, "height": 8},  # no captions: no record
    ]
    annotations = [
        {"id": 10, "image_id": 2, "caption": "A small picture."},
        {"id": 11, "image_id": 1, "caption": "First."},
        {"id": 12, "image_id": 1, "caption": "Second."},
        {"id": 13, "image_id": 2, "caption": "Another one."},
    ]
    write(corpus / "annotations" / "captions.json", coco(images, annotations))
    loads = []
    original = checks.load_image  # every image goes through it, via checks.load_entry_image
    monkeypatch.setattr(
        checks, "load_image", lambda config, path: loads.append(path) or original(config, path)
    )
    source = reader(corpus, format="coco_captions", path="annotations/captions.json", images_root="train2017")
    samples, rejects, counts = read_source(source)
    assert rejects == [] and counts.samples == 4
    assert [s["key"] for s in samples] == [
        "captions.json#1",
        "captions.json#2",
        "captions.json#0",
        "captions.json#3",
    ]
    assert [texts(s) for s in samples] == [["First."], ["Second."], ["A small picture."], ["Another one."]]
    assert all(
        s["kind"] == "caption" and [c["type"] for c in s["content"]] == ["image", "text"] for s in samples
    )
    assert json.loads(samples[0]["meta"]) == {"image_id": 1, "annotation_id": 11}
    assert samples[2]["images"][0]["path"] == "000002.png"
    assert loads == ["000001.jpg", "000002.png"], "each image file is read once"


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_rejects_each_of_its_captions(corpus: Path, name: str):
    annotations = [{"id": i, "image_id": 7, "caption": f"caption {i}"} for i in range(2)]
    write(corpus / "captions.json", coco([{"id": 7, "file_name": f"{name}.jpg"}], annotations))
    _, rejects, _ = read_source(
        reader(corpus, format="coco_captions", path="captions.json", images_root="train2017")
    )
    assert reasons(rejects) == {
        "captions.json#0": BAD_IMAGES[name][1],
        "captions.json#1": BAD_IMAGES[name][1],
    }


def test_bad_annotations_and_entries(corpus: Path):
    images = [
        {"id": 1, "file_name": "000001.jpg", "width": 16, "height": 12},
        {"id": 2, "file_name": "000001.jpg", "width": 12, "height": 16},  # wrong size
        {"id": 3, "file_name": "missing.jpg"},
        {"id": 4, "file_name": "../000001.jpg"},
        {"id": 5},
        {"id": 6, "file_name": "000001.jpg"},
        {"id": 6, "file_name": "000002.png"},  # duplicate id
    ]
    annotations = [
        {"id": 0, "image_id": 1, "caption": "Good."},
        {"id": 1, "image_id": 1, "caption": ""},
        {"id": 2, "image_id": 1, "caption": "bad\u0000text"},
        {"id": 3, "image_id": 1},
        {"id": 4, "image_id": 1, "caption": ["not", "text"]},
        {"id": 5, "image_id": 2, "caption": "Wrong size."},
        {"id": 6, "image_id": 3, "caption": "Missing file."},
        {"id": 7, "image_id": 4, "caption": "Escaping path."},
        {"id": 8, "image_id": 5, "caption": "No file name."},
        {"id": 9, "image_id": 6, "caption": "Ambiguous."},
        {"id": 10, "image_id": 99, "caption": "Unknown image."},
        {"id": 11, "caption": "No image id."},
        {"id": 12, "image_id": [1], "caption": "Bad image id."},
        "not an annotation",
    ]
    write(corpus / "captions.json", coco(images, annotations))
    samples, rejects, counts = read_source(
        reader(corpus, format="coco_captions", path="captions.json", images_root="train2017")
    )
    assert [s["key"] for s in samples] == ["captions.json#0"]
    assert reasons(rejects) == {
        "captions.json#1": "empty_text",
        "captions.json#2": "bad_text",
        "captions.json#3": "missing_field",
        "captions.json#4": "bad_field",
        "captions.json#5": "bad_field",
        "captions.json#6": "missing_image",
        "captions.json#7": "bad_field",
        "captions.json#8": "missing_field",
        "captions.json#9": "bad_field",
        "captions.json#10": "bad_field",
        "captions.json#11": "missing_field",
        "captions.json#12": "bad_field",
        "captions.json#13": "malformed_record",
    }
    assert counts.read == len(annotations)


@pytest.mark.parametrize(
    "text", ["{not json", "[]", '{"images": []}', '{"images": {}, "annotations": []}', ""], ids=repr
)
def test_unreadable_file_is_one_reject(corpus: Path, text: str):
    write(corpus / "captions.json", text)
    samples, (reject,), _ = read_source(reader(corpus, format="coco_captions", path="captions.json"))
    assert samples == [] and (reject["key"], reject["reason"], reject["sample_id"]) == (
        "captions.json",
        "unreadable_file",
        None,
    )


@given(edits=CORRUPTIONS)
def test_fuzzed_file_never_escapes(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "a.jpg", image_bytes("JPEG"))
    images = [{"id": 1, "file_name": "a.jpg", "width": 16, "height": 12}, {"id": 2, "file_name": "b.jpg"}]
    annotations = [{"id": i, "image_id": 1 + i % 3, "caption": f"c{i}"} for i in range(5)]
    clean = coco(images, annotations).encode()
    data = corrupt(clean, edits)
    write(tmp_path / "captions.json", data)
    _, rejects, counts = read_source(reader(tmp_path, format="coco_captions", path="captions.json"))
    if [r for r in rejects if r["sample_id"] is None]:
        assert counts.read == 1
    else:
        assert counts.read == len(json.loads(data.decode("utf-8", "surrogateescape"))["annotations"])
