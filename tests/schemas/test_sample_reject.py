"""schemas.sample and schemas.reject: fixed columns, stable ids, documented reason codes."""

from __future__ import annotations

import hashlib
import re

import pytest

from schemas import reject, sample


def test_sample_columns_in_fixed_order():
    assert sample.SCHEMA.names == [
        "sample_id",
        "source",
        "key",
        "kind",
        "content",
        "images",
        "regions",
        "meta",
    ]
    assert sample.SCHEMA.metadata[b"vl2prep.schema_version"] == str(sample.SCHEMA_VERSION).encode()


def test_sample_id_is_stable_lowercase_hex():
    first = sample.sample_id_for("coco", "captions_train2017.json#42")
    assert first == sample.sample_id_for("coco", "captions_train2017.json#42")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    # Source and key are separated: ("ab", "c") and ("a", "bc") differ.
    assert sample.sample_id_for("ab", "c") != sample.sample_id_for("a", "bc")
    # The documented formula: ids must not change across releases.
    assert sample.sample_id_for("s", "k") == hashlib.sha256(b"s\x00k").hexdigest()[:32]


def test_sample_round_trip_through_arrow():
    row = {
        "sample_id": sample.sample_id_for("llava", "a.json#0"),
        "source": "llava",
        "key": "a.json#0",
        "kind": "conversation",
        "content": [
            {"turn": 0, "role": "user", "type": "image", "text": None, "image": 0},
            {"turn": 0, "role": "user", "type": "text", "text": "\nWhat is this?", "image": None},
            {"turn": 1, "role": "assistant", "type": "text", "text": "A cat.", "image": None},
        ],
        "images": [
            {"bytes": b"\xff\xd8", "path": "cats/1.jpg", "width": 640, "height": 480, "format": "JPEG"}
        ],
        "regions": [
            {
                "phrase": "cat",
                "image": 0,
                "boxes": [[1.0, 2.0, 30.5, 40.0]],
                "segment": 2,
                "start": 2,
                "end": 5,
            }
        ],
        "meta": "{}",
    }
    table = sample.to_table([row])
    assert table.schema.equals(sample.SCHEMA)
    assert table.to_pylist() == [row]


def test_reject_rows_use_documented_codes():
    row = reject.reject("coco", "x#1", "image", "missing_image", "file cats/1.jpg not found", sample_id="ab")
    table = reject.to_table([row])
    assert table.schema.equals(reject.SCHEMA) and table.num_rows == 1
    with pytest.raises(ValueError, match="unknown reject reason"):
        reject.reject("coco", "x", "image", "weird", "")
    with pytest.raises(ValueError, match="unknown reject stage"):
        reject.reject("coco", "x", "somewhere", "missing_image", "")


def test_required_columns_are_not_nullable():
    with pytest.raises(ValueError, match="'source' may not be null"):
        reject.to_table(
            [{"source": None, "key": "k", "sample_id": None, "stage": "read", "reason": "x", "detail": ""}]
        )
