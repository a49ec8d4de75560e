"""pipeline.packing: best-fit decreasing into rows of exactly max_seq_len, per-document positions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import model_shapes
from pipeline import tokenizer
from pipeline.packing import Packer, pack, pack_rows
from pipeline.sequence import SequenceOptions, build
from schemas import shard
from schemas.sample import sample_id_for

TOY = model_shapes.load("toy")
TOK = tokenizer.load("default", TOY)
PAD = TOY.special_tokens.pad


def row(length, name=None, images=0):
    """A shard row of `length` tokens (bos, text, eos) with `images` 1×1 images of 421 tokens after bos."""
    text = "word " * length
    content = [{"turn": 0, "role": None, "type": "image", "text": None, "image": i} for i in range(images)]
    content.append({"turn": 0, "role": None, "type": "text", "text": text, "image": None})
    image = {"bytes": b"x", "path": "a.png", "width": 384, "height": 384, "format": "PNG"}
    box = {"phrase": "w", "boxes": [[1.0, 2.0, 3.0, 4.0]], "segment": None, "start": None, "end": None}
    regions = [{**box, "image": i} for i in range(images)]
    s = {
        "sample_id": sample_id_for("src", name or str(length)),
        "source": "src",
        "key": name or str(length),
        "kind": "interleaved",
        "content": content,
        "images": [image] * images,
        "regions": regions,
        "meta": "{}",
    }
    (made,) = build(s, TOK, options=SequenceOptions(max_seq_len=10**5)).rows
    # Trim to the exact length wanted, keeping the eos (tests need exact sizes).
    keep = length - 1
    ids = np.append(made["input_ids"][:keep], made["input_ids"][-1])
    labels = np.append(made["labels"][:keep], made["labels"][-1])
    return {
        **made,
        "input_ids": ids,
        "labels": labels,
        "seq_len": length,
        "num_text_tokens": length - made["num_image_tokens"],
        "num_loss_tokens": int((labels != -100).sum()),
    }


def test_pack_rows_concatenates_and_pads():
    a, b = row(5, "a"), row(430, "b", images=1)
    packed = pack_rows([a, b], 512, PAD)
    assert packed["seq_len"] == len(packed["input_ids"]) == len(packed["labels"]) == 512
    assert packed["input_ids"].tolist() == [*a["input_ids"], *b["input_ids"], *[PAD] * 77]
    # Each document's bos label becomes -100 in the packed row: no loss across a document boundary.
    assert a["labels"][0] == b["labels"][0] == 0
    assert packed["labels"].tolist() == [-100, *a["labels"][1:], -100, *b["labels"][1:], *[-100] * 77]
    assert packed["position_ids"].tolist() == [*range(5), *range(430), *range(77)]
    assert packed["cu_seqlens"].tolist() == [0, 5, 435, 512]
    assert packed["image_token_offsets"] == [5 + b["image_token_offsets"][0]]
    assert packed["images_spatial_crop"] == [[1, 1]] and packed["regions"][0]["image"] == 0
    assert packed["documents"] == [
        {
            "sample_id": a["sample_id"],
            "source": "src",
            "kind": "interleaved",
            "part": 0,
            "seq_len": 5,
            "special_strings_as_text": 0,
        },
        {
            "sample_id": b["sample_id"],
            "source": "src",
            "kind": "interleaved",
            "part": 0,
            "seq_len": 430,
            "special_strings_as_text": 0,
        },
    ]
    assert (packed["source"], packed["kind"], packed["key"]) == ("packed", "packed", None)
    assert packed["num_image_tokens"] == 421 and packed["num_text_tokens"] == 435 - 421
    assert shard.to_table([packed]).num_rows == 1
    full = pack_rows([row(300, "c"), row(212, "d")], 512, PAD)
    assert full["cu_seqlens"].tolist() == [0, 300, 512] and full["input_ids"][-1] == 1  # ends with eos


def test_regions_follow_their_images():
    packed = pack_rows([row(430, "a", images=1), row(860, "b", images=2)], 2048, PAD)
    assert [r["image"] for r in packed["regions"]] == [0, 1, 2]
    assert packed["image_token_offsets"] == [1, 431, 431 + 421]


def test_best_fit_decreasing_by_hand():
    # Lengths 60, 50, 40, 30, 20 into 100: 60 → bin 0; 50 → bin 1; 40 → bin 0 (room 40, exact);
    # 30 → bin 1 (room 50 → 20); 20 → bin 1 (room 20, exact).
    rows = [row(n, f"r{n}") for n in (20, 60, 30, 50, 40)]
    packer = Packer(100, PAD, buffer_size=10)
    assert all(packer.add(r) == [] for r in rows)
    first, second = packer.flush()
    assert [d["seq_len"] for d in first["documents"]] == [60, 40]  # documents keep their input order
    assert [d["seq_len"] for d in second["documents"]] == [20, 30, 50]
    assert packer.stats.rows == 2 and packer.stats.documents == 5 and packer.stats.efficiency == 1.0


def test_buffer_bounds_the_lookahead():
    rows = [row(n, f"b{i}") for i, n in enumerate([60, 60, 40, 40])]
    packer = Packer(100, PAD, buffer_size=2)
    out = (
        packer.add(rows[0]) + packer.add(rows[1]) + packer.add(rows[2]) + packer.add(rows[3]) + packer.flush()
    )
    # The two 60s are packed before the 40s arrive: three rows (60, 60, 40 + 40), not two (60 + 40 twice).
    assert [[d["seq_len"] for d in p["documents"]] for p in out] == [[60], [60], [40, 40]]
    assert packer.stats.efficiency == pytest.approx(200 / 300)
    assert len(list(pack(rows, 100, PAD, buffer_size=4))) == 2


LENGTHS = {n: row(n, f"len{n}") for n in range(2, 301)}


@given(st.lists(st.integers(2, 300), min_size=1, max_size=40), st.integers(1, 16))
def test_packing_is_exact_complete_and_deterministic(lengths, buffer_size):
    rows = [LENGTHS[n] for n in lengths]
    packed = list(pack(rows, 300, PAD, buffer_size))
    assert shard.to_table(packed).equals(shard.to_table(list(pack(rows, 300, PAD, buffer_size))))
    assert all(p["seq_len"] == len(p["input_ids"]) == len(p["position_ids"]) == 300 for p in packed)
    documents = [d["sample_id"] for p in packed for d in p["documents"]]
    assert sorted(documents) == sorted(r["sample_id"] for r in rows)
    for p in packed:
        bounds = p["cu_seqlens"].tolist()
        assert bounds[0] == 0 and bounds[-1] == 300 and bounds == sorted(bounds)
        for start, end in itertools.pairwise(bounds):
            assert p["position_ids"][start:end].tolist() == list(range(end - start))
        used = sum(d["seq_len"] for d in p["documents"])
        assert (p["input_ids"][used:] == PAD).all() and (p["labels"][used:] == -100).all()


def test_errors():
    packer = Packer(100, PAD)
    with pytest.raises(ValueError, match="101 tokens > max_seq_len 100"):
        packer.add(row(101))
    with pytest.raises(ValueError, match="packed already"):
        packer.add(pack_rows([row(10)], 100, PAD))
    with pytest.raises(ValueError, match="different tokenizers"):
        pack_rows([row(10), {**row(11), "tokenizer_sha256": "0" * 64}], 100, PAD)
    with pytest.raises(ValueError, match="do not make one row"):
        pack_rows([row(60), row(50)], 100, PAD)
    with pytest.raises(ValueError, match="must be positive"):
        Packer(0, PAD)
