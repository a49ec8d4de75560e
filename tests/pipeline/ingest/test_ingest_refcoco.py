"""pipeline.ingest.refcoco: REFER refs (restricted pickle or JSON) with COCO instances."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write

from pipeline.ingest import ConfigError
from pipeline.ingest.checks import FileUnreadable
from pipeline.ingest.refcoco import load_plain_pickle
from pipeline.templates import render

INSTANCES = {
    "images": [
        {"id": 1, "file_name": "COCO_1.jpg", "width": 40, "height": 20},
        {"id": 2, "file_name": "COCO_2.png"},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "bbox": [2, 3, 10, 5]},
        {"id": 11, "image_id": 1, "bbox": [30, 10, 20, 20]},
        {"id": 12, "image_id": 2, "bbox": [0, 0, 0, 4]},
        {"id": 13, "image_id": 2, "bbox": [40, 0, 4, 4]},
    ],
}


def ref(index: int, image_id: object, ann_id: object, *sentences: str, split: str = "train") -> dict:
    return {
        "ref_id": index,
        "image_id": image_id,
        "ann_id": ann_id,
        "split": split,
        "file_name": "ignored.jpg",
        "sentences": [{"raw": s, "sent": s.lower(), "sent_id": i} for i, s in enumerate(sentences)],
    }


REFS = [
    ref(0, 1, 10, "The man", "man on left", "The man"),
    ref(1, 1, [10, 11], "both people", split="val"),
    ref(2, 2, 12, "flat"),
    ref(3, 2, 13, "outside"),
    ref(4, 3, 10, "no image"),
    ref(5, 1, 12, "wrong image"),
    ref(6, 1, 10),
    ref(7, 1, [], "nothing"),
]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "refcoco"
    write(folder / "instances.json", json.dumps(INSTANCES))
    write(folder / "refs(unc).p", pickle.dumps(REFS, protocol=2))
    write(tmp_path / "images" / "COCO_1.jpg", image_bytes("JPEG", (40, 20)))
    write(tmp_path / "images" / "COCO_2.png", image_bytes("PNG", (30, 10)))
    return tmp_path


def test_one_grounding_sample_per_ref(dataset: Path):
    samples, rejects, counts = read_source(
        reader(dataset, format="refcoco", path="refcoco", images_root="images")
    )
    first, second = samples
    assert first["kind"] == "grounding" and [s["type"] for s in first["content"]] == ["image"]
    assert [(r["phrase"], r["boxes"], r["segment"]) for r in first["regions"]] == [
        ("The man", [[2, 3, 12, 8]], None),
        ("man on left", [[2, 3, 12, 8]], None),
    ]
    assert second["regions"][0]["boxes"] == [[2, 3, 12, 8], [30, 10, 40, 20]]
    assert first["images"][0]["path"] == "COCO_1.jpg"
    meta = json.loads(first["meta"])
    assert meta["ref_id"] == 0 and meta["ann_id"] == 10 and "file_name" not in meta
    assert reasons(rejects) == {
        "refs(unc).p#2": "degenerate_box",
        "refs(unc).p#3": "box_outside_image",
        "refs(unc).p#4": "bad_field",
        "refs(unc).p#5": "bad_field",
        "refs(unc).p#6": "empty_text",
        "refs(unc).p#7": "missing_field",
    }
    assert counts.read == len(REFS)
    turns = render(first).blocks
    assert len(turns) == 4  # one user/assistant pair per distinct sentence


def test_split_and_json_refs(dataset: Path):
    write(dataset / "refcoco" / "refs(google).json", json.dumps(REFS))
    with pytest.raises(
        ConfigError, match=r"source\.split_by: required .* found refs\(google\)\.json, refs\(unc\)\.p"
    ):
        reader(dataset, format="refcoco", path="refcoco")
    with pytest.raises(ConfigError, match=r"source\.split_by: expected one refs\(umd\)"):
        reader(dataset, format="refcoco", path="refcoco", split_by="umd")
    source = reader(
        dataset, format="refcoco", path="refcoco", images_root="images", split_by="google", split="val"
    )
    assert source.files() == ["refs(google).json"]
    (sample,), rejects, _ = read_source(source)
    assert rejects == [] and sample["key"] == "refs(google).json#1"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(dataset: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps([{"ref_id": 0, "payload": Exploit()}])
    with pytest.raises(FileUnreadable, match=r"refers to (posix|os)\.system.*nothing was executed"):
        load_plain_pickle(data)
    write(dataset / "refcoco" / "refs(unc).p", data)
    samples, (reject,), _ = read_source(
        reader(dataset, format="refcoco", path="refcoco", images_root="images")
    )
    assert samples == [] and reject["reason"] == "unreadable_file" and "system" in reject["detail"]
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileUnreadable, match="plain"):
        load_plain_pickle(pickle.dumps(b"bytes", protocol=3))


def test_missing_instances_is_one_file_reject(dataset: Path):
    (dataset / "refcoco" / "instances.json").unlink()
    _, (reject,), _ = read_source(reader(dataset, format="refcoco", path="refcoco/refs(unc).p"))
    assert (reject["key"], reject["reason"]) == ("refs(unc).p", "unreadable_file")


@given(edits=CORRUPTIONS)
def test_fuzzed_pickle_never_escapes(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "instances.json", json.dumps(INSTANCES))
    write(tmp_path / "COCO_1.jpg", image_bytes("JPEG", (40, 20)))
    write(tmp_path / "refs(unc).p", corrupt(pickle.dumps(REFS, protocol=2), edits))
    read_source(reader(tmp_path, format="refcoco", path="."))
