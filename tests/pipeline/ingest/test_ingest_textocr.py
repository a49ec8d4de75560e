"""pipeline.ingest.textocr: one OCR sample per image of a TextOCR / COCO-Text file."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write


def textocr(imgs: dict, anns: dict, img_to_anns: dict | None = None) -> str:
    document = {"imgs": imgs, "anns": anns}
    if img_to_anns is not None:
        document["imgToAnns"] = img_to_anns
    return json.dumps(document)


def ann(image_id: object, bbox: object, word: object = None, **more: object) -> dict:
    return {"image_id": image_id, "bbox": bbox, **({} if word is None else {"utf8_string": word}), **more}


def test_words_with_boxes_and_illegible_skipped(tmp_path: Path):
    write(tmp_path / "train" / "a.jpg", image_bytes("JPEG", (40, 20)))
    imgs = {
        "a": {"id": "a", "file_name": "train/a.jpg", "width": 40, "height": 20, "set": "train"},
        "b": {"id": "b", "file_name": "train/a.jpg", "width": 40, "height": 20},
        "c": {"id": "c", "file_name": "train/a.jpg", "width": 41, "height": 20},
        "d": {"id": "d", "file_name": "train/a.jpg"},
    }
    anns = {
        "a_1": ann("a", [1, 2, 10, 5], "STOP"),
        "a_2": ann("a", [30, 10, 20, 20], "."),
        "a_3": ann("a", [30, 10, 20, 20], "exit"),
        "b_1": ann("b", [1, 1, 2, 2], "."),
        "c_1": ann("c", [1, 1, 2, 2], "x"),
        "d_1": ann("d", [50, 1, 2, 2], "far"),
    }
    write(
        tmp_path / "TextOCR_0.1_train.json",
        textocr(imgs, anns, {k: [f"{k}_1", f"{k}_2", f"{k}_3"][: 3 if k == "a" else 1] for k in imgs}),
    )
    samples, rejects, _ = read_source(reader(tmp_path, format="textocr", path="TextOCR_0.1_train.json"))
    (sample,) = samples
    assert sample["kind"] == "ocr" and sample["content"][1]["text"] == "STOP exit"
    assert [(r["phrase"], r["boxes"], r["start"], r["end"]) for r in sample["regions"]] == [
        ("STOP", [[1, 2, 11, 7]], 0, 4),
        ("exit", [[30, 10, 40, 20]], 5, 9),
    ]
    assert json.loads(sample["meta"]) == {"id": "a", "image_id": "a", "set": "train"}
    key = "TextOCR_0.1_train.json#"
    assert reasons(rejects) == {
        f"{key}b": "empty_text",
        f"{key}c": "bad_field",
        f"{key}d": "box_outside_image",
    }


def test_coco_text_without_img_to_anns(tmp_path: Path):
    write(tmp_path / "i.png", image_bytes("PNG", (8, 10)))
    imgs = {"1": {"id": 1, "file_name": "i.png"}, "2": {"id": 2, "file_name": "i.png"}}
    anns = {
        "10": ann(1, [0, 0, 4, 4], "ab", legibility="legible"),
        "11": ann(1, [0, 0, 4, 4], None, legibility="illegible"),
        "12": ann(2, [0, 0, 0, 4], "zero", legibility="legible"),
        "13": ann(2, [0, 0, 1, 1], None, legibility="legible"),
    }
    write(tmp_path / "cocotext.json", textocr(imgs, anns))
    samples, rejects, _ = read_source(reader(tmp_path, format="textocr", path="cocotext.json"))
    assert [s["content"][1]["text"] for s in samples] == ["ab"]
    assert reasons(rejects) == {"cocotext.json#2": "missing_field"}


def test_bad_structures(tmp_path: Path):
    write(tmp_path / "i.png", image_bytes("PNG", (8, 10)))
    imgs = {"1": {"file_name": "i.png"}, "2": [], "3": {"file_name": "i.png"}, "4": {"file_name": "/i.png"}}
    anns = {"a": ann("1", [0, 0, 2, 2], "w"), "c": ann("4", [0, 0, 2, 2], "w")}
    write(tmp_path / "t.json", textocr(imgs, anns, {"1": ["zz"], "2": ["a"], "3": "a", "4": ["c"]}))
    _, rejects, _ = read_source(reader(tmp_path, format="textocr", path="t.json"))
    assert reasons(rejects) == {
        "t.json#1": "bad_field",
        "t.json#2": "malformed_record",
        "t.json#3": "bad_field",
        "t.json#4": "bad_field",
    }
    write(tmp_path / "t.json", '{"imgs": []}')
    (reject,) = read_source(reader(tmp_path, format="textocr", path="t.json"))[1]
    assert (reject["key"], reject["reason"]) == ("t.json", "unreadable_file")


@given(edits=CORRUPTIONS)
def test_fuzzed_file_never_escapes(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "i.png", image_bytes("PNG", (8, 10)))
    imgs = {str(i): {"file_name": "i.png", "width": 8, "height": 10} for i in range(3)}
    anns = {f"{i}_{j}": ann(str(i), [j, j, 3, 3], "w" * j) for i in range(3) for j in range(1, 3)}
    data = corrupt(textocr(imgs, anns, {str(i): [f"{i}_1", f"{i}_2"] for i in range(3)}).encode(), edits)
    write(tmp_path / "t.json", data)
    _, rejects, counts = read_source(reader(tmp_path, format="textocr", path="t.json"))
    if not any(r["sample_id"] is None for r in rejects):
        assert counts.read == len(json.loads(data.decode("utf-8", "surrogateescape"))["imgs"])
